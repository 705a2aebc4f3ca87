"""``mnistfx plot``: a run's learning curves, confusion matrix and mistakes as PNGs."""

import click

import mnistfx

from .options import data_root_option, device_option, printable


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", type=click.Path(), help="Folder for the PNGs (default: the run folder).")
@device_option
@data_root_option
def plot(run_dir, out, device, data_root):
    """Draw RUN_DIR's history.png, confusion.png and mistakes.png (needs matplotlib: the plot extra)."""
    data = mnistfx.load_mnist(data_root) if data_root else None
    for path in mnistfx.plot_run(run_dir, out=out, data=data, device=device):
        click.echo(printable(f"wrote {path}"))
