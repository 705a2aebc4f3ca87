"""Errors that mean the user has something to fix (the CLI prints them as one line)."""


class MnistfxError(Exception):
    """A problem the user can fix; its message says what was wrong and what to do."""


class DataError(MnistfxError):
    """MNIST is missing, corrupt, or could not be fetched."""


class WeightsError(MnistfxError):
    """A weights file is unreadable, not safetensors, or does not fit the model."""
