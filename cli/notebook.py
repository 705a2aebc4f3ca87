"""``mnistfx import-notebook`` and ``mnistfx export-notebook``: the notebook's ``.pth`` both ways."""

import contextlib

import click

import mnistfx

from .options import printable

out_option = click.option("--out", required=True, type=click.Path(), help="The file to write.")
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")


@contextlib.contextmanager
def _writing(out):
    """A file that cannot be written is one line (the library already refuses to replace one)."""
    try:
        yield
    except OSError as e:
        raise mnistfx.WeightsError(f"cannot write {out} ({e.strerror}): pass a writable --out") from None
    click.echo(printable(f"wrote {out}"))


@click.command(name="import-notebook")
@click.argument("checkpoint", type=click.Path())
@out_option
@overwrite_option
def import_notebook(checkpoint, out, overwrite):
    """Convert the notebook's CHECKPOINT (.pth state_dict) into mnistfx weights (safetensors)."""
    w = mnistfx.load_model_weights(checkpoint)
    with _writing(out):
        mnistfx.save_weights(
            out,
            w.params,
            {"model": w.model.name, "source": "notebook checkpoint", "mnistfx_version": mnistfx.__version__},
            overwrite=overwrite,
        )


@click.command(name="export-notebook")
@click.argument("weights", type=click.Path())
@out_option
@overwrite_option
def export_notebook(weights, out, overwrite):
    """Write WEIGHTS as a .pth state_dict that the notebook's own nn.Module loads (strict)."""
    w = mnistfx.load_model_weights(weights)
    if w.members is not None:
        raise mnistfx.WeightsError(f"{weights} holds an ensemble of {w.members}: the notebook's module is one model")
    with _writing(out):
        mnistfx.export_notebook_checkpoint(out, w.model, w.params, overwrite=overwrite)
