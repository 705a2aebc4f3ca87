"""``mnistfx plot``: a run's learning curves, confusion matrix and mistakes (and an ensemble's members) as PNGs."""

import click

import mnistfx

from .options import data_root_option, device_option, model_option, named_model, printable


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", type=click.Path(), help="Folder for the PNGs, made if absent (default: the run folder).")
@model_option
@device_option
@data_root_option
def plot(run_dir, out, model_spec, device, data_root):
    """Draw RUN_DIR's history.png, confusion.png and mistakes.png, and for an ensemble members.png
    (needs matplotlib: the plot extra)."""
    data = mnistfx.load_mnist(data_root) if data_root else None
    model = named_model(model_spec) if model_spec else None
    for path in mnistfx.plot_run(run_dir, out=out, data=data, device=device, model=model):
        click.echo(printable(f"wrote {path}"))
