"""``mnistfx serve``: a page to draw digits on, and its JSON API, for trained weights."""

import signal

import click

import mnistfx

from .options import device_option, load_trained, model_option, printable


@click.command()
@click.argument("weights", type=click.Path())
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 127.0.0.1 is this machine only, 0.0.0.0 every network it is on.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0: any free one).",
)
@model_option
@device_option
def serve(weights, host, port, model_spec, device):
    """Serve a page to draw digits on for WEIGHTS (a single model or an ensemble): the prediction
    updates while drawing, with all ten probabilities and the 28×28 image the model sees. Its API:
    POST /api/predict with an image file (PNG, JPEG, ...; prepared as `mnistfx predict` prepares
    files) answers JSON (label, probabilities, image, ms); GET /api/health. Ctrl-C stops it."""
    w = load_trained(weights, model_spec).to(mnistfx.resolve_device(device))
    server = mnistfx.make_server(w, host, port, log=lambda line: click.echo(printable(line), err=True))
    name = w.model.name if w.members is None else f"an ensemble of {w.members} {w.model.name}"
    click.echo(f"serving {name} from {printable(weights)} at {server.url} (Ctrl-C stops)")
    if not server.local_only:
        click.echo("note: other machines can reach this server; it has no login", err=True)
    # Ctrl-C stops it even when started by a process that ignores SIGINT (a shell's background job, some
    # supervisors): a child inherits the ignoring, and Python then installs no KeyboardInterrupt of its own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        server.server_close()
