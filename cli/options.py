"""What several commands share: their common options, the console, and help built from the
library's own recipes and limits (all importable without torch)."""

from __future__ import annotations

import math

import click

import mnistfx
from mnistfx.constants import DEVICES_HINT
from mnistfx.training.config import RECIPES

DATA_ROOT_HELP = "Data folder (default: $MNISTFX_DATA or ~/.cache/mnistfx)."

data_root_option = click.option("--data-root", type=click.Path(), help=DATA_ROOT_HELP)
device_option = click.option("--device", default="cpu", show_default=True, help=f"{DEVICES_HINT}.")


model_option = click.option(
    "--model",
    "model_spec",
    metavar="MODEL",
    help="The weights' model when it is your own: MODULE:ATTR (imported; only name code you "
    "trust). Default: the model the file names, if built in.",
)


def named_model(spec: str) -> str:
    """The name of the model ``spec`` names: a known name, or ``MODULE:ATTR`` (imported and registered)."""
    return (mnistfx.import_model(spec) if ":" in spec else mnistfx.get_model(spec)).name


def load_trained(weights, model_spec: str | None):
    """:func:`mnistfx.load_model_weights`, after importing the model ``--model`` names (if any)."""
    return mnistfx.load_model_weights(weights, model=named_model(model_spec) if model_spec else None)


def positive(ctx, param, value):
    """A click callback: a float option must be a finite number > 0 (click's ranges let nan and inf through)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} is not a positive number")
    return value


def json_option(help: str):
    """The ``--json`` flag (parameter ``as_json``) with a command's own help."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def console(stderr: bool = False):
    """A rich console for plain output: no markup (paths may hold brackets), no highlighting, no wrapping."""
    from rich.console import Console

    return Console(stderr=stderr, markup=False, highlight=False, soft_wrap=True)


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (newline, escape, ...) written as an escape."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def quiet_torch_logs():
    """Silence torch's 'No CUDA runtime is found' log line, which inductor emits on CPU-only machines."""
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def recipe_values(field: str) -> str:
    """A config field's value in each recipe, for help texts: ``default recipe: tuned 15, cnn 10; fast: 12``."""

    def show(value):
        return f"{value:g}" if isinstance(value, float) else str(value)

    parts = []
    for name, configs in RECIPES.items():
        values = {model: show(getattr(cfg, field)) for model, cfg in configs.items()}
        shown = (
            next(iter(values.values()))
            if len(set(values.values())) == 1
            else ", ".join(f"{model} {value}" for model, value in values.items())
        )
        parts.append(f"{name} recipe: {shown}" if name == "default" else f"{name}: {shown}")
    return "; ".join(parts)
