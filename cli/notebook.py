"""``mnistfx import-notebook`` and ``mnistfx export-notebook``: the notebook's ``.pth`` both ways."""

import click

import mnistfx

from .options import printable


@click.command(name="import-notebook")
@click.argument("checkpoint", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="The weights.safetensors to write.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def import_notebook(checkpoint, out, overwrite):
    """Convert the notebook's CHECKPOINT (.pth state_dict) into mnistfx weights (safetensors)."""
    model, params, _ = mnistfx.load_model_weights(checkpoint)
    try:
        mnistfx.save_weights(out, params, {"model": model.name, "source": "notebook checkpoint",
                                           "mnistfx_version": mnistfx.__version__}, overwrite=overwrite)
    except OSError as e:
        raise mnistfx.WeightsError(f"cannot write {out} ({e.strerror}): pass a writable --out") from None
    click.echo(printable(f"wrote {model.name} weights to {out}"))


@click.command(name="export-notebook")
@click.argument("weights", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="The .pth file to write.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def export_notebook(weights, out, overwrite):
    """Write WEIGHTS as a .pth state_dict that the notebook's own nn.Module loads (strict)."""
    model, params, _ = mnistfx.load_model_weights(weights)
    try:
        mnistfx.export_notebook_checkpoint(out, model, params, overwrite=overwrite)
    except OSError as e:
        raise mnistfx.WeightsError(f"cannot write {out} ({e.strerror}): pass a writable --out") from None
    click.echo(printable(f"wrote {model.name} as the notebook's state_dict to {out}"))
