"""What a model is and how it runs: the :class:`~mnistfx.Model` contract and its checks, the registry
of models by name, the built-in models (the notebook's two CNNs, ``resnet``), ensembles of stacked
members, a model as an ``nn.Module``, the notebook's ``.pth`` checkpoints, weights files, and
evaluation (logits, probabilities, predictions, metrics).

May import :mod:`mnistfx.data` and the lowest layer; nothing of training or what uses a trained model.
"""
