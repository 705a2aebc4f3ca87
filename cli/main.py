"""The ``mnistfx`` command group and its entry point: user mistakes become one ``error:`` line
and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import sys

import click

from mnistfx.errors import MnistfxError

from . import launch
from .bench import bench
from .data import data
from .evaluate import eval_, predict
from .export import export
from .flags import in_flags
from .notebook import export_notebook, import_notebook
from .options import printable
from .plot import plot
from .read import read
from .robustness import robustness
from .serve import serve
from .train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mnistfx")
def cli():
    """Handwritten-digit recognition (MNIST) with pure-function PyTorch models."""


for command in (
    data,
    train,
    eval_,
    predict,
    read,
    robustness,
    export,
    serve,
    bench,
    plot,
    import_notebook,
    export_notebook,
):
    cli.add_command(command)


def main(argv=None) -> int:
    """Run the CLI and return its exit status."""
    launch.ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    if "WORLD_SIZE" in os.environ:  # a rank: c10d's connection retries are not the user's news (before torch loads)
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        status = cli.main(args=argv, prog_name="mnistfx", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        if not launch.launched():  # a rank of --nproc: the launcher says it for the run
            _error("interrupted")
        return leave(130)
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "mnistfx"
        _error(f"{e.format_message()} (see `{cmd} --help`)")
        return leave(2)
    except click.ClickException as e:
        _error(e.format_message())
        return leave(e.exit_code)
    except MnistfxError as e:
        if not getattr(e, "quiet", False):  # a stopped data-parallel rank other than 0: rank 0 says it
            _error(in_flags(str(e), *_flags_of(launch.ARGV)))
        return leave(1)
    return status if isinstance(status, int) else 0  # a command's click.exceptions.Exit


def leave(status: int) -> int:
    """``status``, or, in a data-parallel rank that failed while in its process group, the end of the
    process with ``status`` at once.

    A group that a lost or stopped peer broke cannot be torn down: gloo's threads may still hold the
    peer's unfinished work, whose tensors are freed during the interpreter's shutdown, and the process
    then aborts in C++ (``terminate called without an active exception``, SIGABRT) after its one line.
    So a failed rank flushes what it printed and leaves without the shutdown (its files are whole:
    every one is written to a temp file and renamed).
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _flags_of(argv: list[str]) -> tuple[set[str] | None, dict[str, str]]:
    """The flags of the command ``argv`` runs (``None`` if it names none), and every command's flags
    (flag -> the command that has it), for errors that name a flag of another command."""
    elsewhere: dict[str, str] = {}
    for name, command in sorted(cli.commands.items(), reverse=True):  # the first name (alphabetically) wins
        elsewhere.update({opt: name for p in command.params for opt in p.opts if opt.startswith("--")})
    name = next((a for a in argv if not a.startswith("-")), None)
    command = cli.commands.get(name) if name else None
    here = {opt for p in command.params for opt in p.opts} if command else None
    return here, elsewhere


def _error(message: str) -> None:
    """One line on stderr, whatever the message holds (a path may hold a newline or an escape)."""
    click.echo("error: " + printable(message), err=True)


if __name__ == "__main__":
    sys.exit(main())
