"""The machinery of the refusal corpora (tests/test_refused_*.py): a case is a function that makes a bad
input and returns the command line that must refuse it; the test runs it and checks the refusal."""

import inspect

import pytest
from helpers import assert_one_line_error, run_cli


def _files(root):
    return {p.relative_to(root): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


class Cases:
    """One corpus: ``@case(*fragments)`` registers a function whose parameters are pytest fixtures
    (``tmp_path``, ``weights``, ``mnist``, ...) and which returns the ``mnistfx`` arguments to run; the error
    line must hold every fragment. ``test_refused = case.test()`` makes the test, one id per case."""

    def __init__(self):
        self.cases = {}

    def __call__(self, *fragments: str):
        def register(fn):
            self.cases[fn.__name__] = (fn, fragments)
            return fn

        return register

    def test(self):
        cases = self.cases

        @pytest.mark.parametrize("name", list(cases))
        def test_refused(name, request, tmp_path, capsys):
            fn, fragments = cases[name]
            argv = fn(**{p: request.getfixturevalue(p) for p in inspect.signature(fn).parameters})
            before = _files(tmp_path)
            code, _, err = run_cli(capsys, *argv)
            assert_one_line_error(code, err, *fragments)
            assert _files(tmp_path) == before, "a file was created or changed"
            assert not (tmp_path / "canary").exists(), "a pickle ran code"

        return test_refused
