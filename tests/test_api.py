"""The shape of the package: a deliberate public API, small modules, no import cycle, the CLI
installed under its own name, and the command line's constants taken from the library."""

import ast
import importlib
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import mnistfx

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted((ROOT / "mnistfx").glob("*.py"))


def test_every_public_name_resolves_and_says_what_it_does():
    for name in mnistfx.__all__:
        obj = getattr(mnistfx, name)
        if callable(obj):
            assert (obj.__doc__ or "").strip(), f"mnistfx.{name} has no docstring"
    assert set(mnistfx.__all__) <= set(dir(mnistfx))
    with pytest.raises(AttributeError):
        mnistfx.check_config  # noqa: B018 (internal names are not public)


def test_the_lazy_table_and_the_eager_imports_for_type_checkers_agree():
    tree = ast.parse((ROOT / "mnistfx" / "__init__.py").read_text())
    (guard,) = [n for n in tree.body if isinstance(n, ast.If)]
    eager = {(node.module, alias.name) for node in guard.body for alias in node.names}
    assert eager == {(module, name) for name, module in mnistfx._PUBLIC.items()}


def test_no_public_name_shadows_a_module():
    for name in mnistfx.__all__:
        assert importlib.util.find_spec(f"mnistfx.{name}") is None, f"mnistfx.{name} is also a module"
    import mnistfx.training as training

    assert training.train is mnistfx.train and callable(mnistfx.train)


def _imports(path: Path):
    """(module-level mnistfx imports, mnistfx imports inside functions) of one library file."""
    tree = ast.parse(path.read_text())
    top, nested = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            inside = node not in tree.body and not any(node in getattr(n, "body", []) for n in tree.body
                                                       if isinstance(n, ast.If))
            (nested if inside else top).update(names)
    return top, nested


def test_no_import_cycle_and_no_import_hidden_in_a_function():
    graph = {}
    for path in LIBRARY:
        top, nested = _imports(path)
        if path.name != "__init__.py":
            assert not nested, f"{path.name} imports {sorted(nested)} inside a function"
            graph[path.stem] = top
    done, visiting = set(), []

    def visit(module):
        assert module not in visiting, "import cycle: " + " -> ".join(visiting[visiting.index(module):] + [module])
        if module in done:
            return
        visiting.append(module)
        for dep in graph.get(module, ()):
            visit(dep)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_the_version_lives_in_one_place():
    assert mnistfx.__version__ == metadata.version("mnistfx")
    assert "__version__ =" not in (ROOT / "mnistfx" / "__init__.py").read_text()


def test_the_builtin_model_names_are_the_models():
    from mnistfx.constants import OPTIMIZERS as OPTIMIZER_NAMES
    from mnistfx.optim import OPTIMIZERS
    from mnistfx.reference import ARCHS

    from mnistfx.constants import NOTEBOOK_MODELS
    assert mnistfx.MODELS == (*NOTEBOOK_MODELS, "resnet") == mnistfx.model_names()[:3]
    assert NOTEBOOK_MODELS == tuple(ARCHS)
    assert OPTIMIZER_NAMES == tuple(OPTIMIZERS)


def test_the_package_root_and_the_cli_constants_load_without_torch():
    code = ("import sys, mnistfx, mnistfx.config, mnistfx.constants, mnistfx_cli.main; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(mnistfx.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_cli_is_installed_as_mnistfx_cli_not_cli(tmp_path):
    # From a folder outside the checkout, only the installed names are importable.
    code = ("import importlib.util as u, sys; "
            "sys.exit(0 if u.find_spec('mnistfx_cli') and not u.find_spec('cli') else 1)")
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path).returncode == 0
    src = tmp_path / "src"  # a copy, so that building leaves nothing in the checkout
    for name in ("mnistfx", "cli"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "--disable-pip-version-check", "-w", str(tmp_path), str(src)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("mnistfx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mnistfx_cli/main.py" in names and "mnistfx/training.py" in names
    assert not any(n.startswith("cli/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mnistfx = mnistfx_cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()
