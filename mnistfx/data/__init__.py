"""MNIST and digit images: where the data set lives, fetching it, the IDX format, loading it onto a
device, the training augmentation, and turning an image file into a 28x28 digit.

May import the lowest layer (:mod:`mnistfx.errors`, :mod:`mnistfx.constants`, :mod:`mnistfx.rng`,
:mod:`mnistfx.runtime` and the internal helpers); nothing of models, training or what uses a trained model.
"""
