"""Helpers the test files share (fixtures live in conftest.py)."""

import os
import sys

from mnistfx_cli.main import main

MNISTFX = os.path.join(os.path.dirname(sys.executable), "mnistfx")  # the installed console script


def run_cli(capsys, *args):
    """Run ``mnistfx ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    """A non-zero exit and one ``error:`` line on stderr holding every fragment, no traceback."""
    assert code != 0
    lines = err.rstrip("\n").split("\n")  # a blank line before the error counts as a line
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def same_bits(a: dict, b: dict) -> bool:
    """Two tensor dicts with the same names, dtypes, shapes and bytes."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and a[k].cpu().numpy().tobytes() == b[k].cpu().numpy().tobytes()
        for k in a
    )
