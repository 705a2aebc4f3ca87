"""Training: the config and its recipes, the pure optimisers, the pure train step and its inputs,
compiling it, the loop (:func:`~mnistfx.train`, :func:`~mnistfx.resume`), checkpoints, run folders,
and data-parallel training.

May import :mod:`mnistfx.models`, :mod:`mnistfx.data` and the lowest layer; nothing that uses a
trained model (:mod:`mnistfx.trained`, :mod:`mnistfx.bench`).
"""
