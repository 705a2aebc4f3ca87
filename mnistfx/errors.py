"""Errors that mean the user has something to fix (the CLI prints them as one line).

A message speaks the library's language: the arguments it names are in backticks as one writes them in
Python (`` `overwrite=True` ``, `` `compile=False` ``, `` `lr` ``), and :attr:`MnistfxError.fields` lists
them. The command line shows the same message with its flags in their place (``--overwrite``,
``--no-compile``, ``--lr``). Importable without torch. Errors about values are also ``ValueError``\\ s, so
library code that catches ``ValueError`` keeps working.
"""

import re

# `name` or `name=value`, standing alone (a backtick inside a quoted path or name is the user's)
_ARGUMENT = re.compile(r"(?<![^\s(])`([a-z][a-z0-9_]*)(?:=[^`\s]*)?`(?![^\s,.;:)])")


class MnistfxError(Exception):
    """A problem the user can fix; its message says what was wrong and what to do."""

    @property
    def fields(self) -> tuple[str, ...]:
        """The arguments (and config fields) the message names, in order, e.g. ``("overwrite", "checkpoint_dir")``."""
        return tuple(dict.fromkeys(_ARGUMENT.findall(str(self))))


class ConfigError(MnistfxError, ValueError):
    """A setting no run can use (a config field, an argument, a model or recipe name)."""


class ModelError(MnistfxError, TypeError):
    """A model of one's own does not keep the model contract (what init, apply, noise or the loss return)."""


class DataError(MnistfxError):
    """MNIST is missing, corrupt, or could not be fetched."""


class WeightsError(MnistfxError, ValueError):
    """Weights or a checkpoint are unreadable, not safetensors, or do not fit the model."""


class RunFolderError(MnistfxError):
    """A run folder is taken: it holds a run a new one would replace, or another run is writing there."""
