"""The shape of the package: a deliberate public API, small modules, no import cycle, the CLI
installed under its own name, and the command line's constants taken from the library."""

import ast
import importlib
import importlib.util
import inspect
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import mnistfx

pytestmark = pytest.mark.fast  # no real data, no compiling: `make check` runs these

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted((ROOT / "mnistfx").rglob("*.py"))


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
    import mnistfx.training.loop as loop

    assert loop.train is mnistfx.train and callable(mnistfx.train)  # the subpackage is not called `train`


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    folder, _, leaf = name.replace(".", "/").rpartition("/")
    return (ROOT / folder / f"{leaf}.py").is_file() or (ROOT / folder / leaf / "__init__.py").is_file()


def _imports(path: Path):
    """(module-level mnistfx imports, mnistfx imports inside functions) of one library file, as full
    module names (``from .x import y`` names ``x.y`` where that is a module, else ``x``)."""
    tree = ast.parse(path.read_text())
    package = _module(path).split(".") if path.name == "__init__.py" else _module(path).split(".")[:-1]
    top, nested = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            names = {f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names}
            inside = node not in tree.body and not any(
                node in getattr(n, "body", []) for n in tree.body if isinstance(n, ast.If)
            )
            (nested if inside else top).update(names)
    return top, nested


# The layers, lowest first: a module imports from its own layer or those below, never from one above.
LAYERS = {
    "mnistfx.errors": 0,
    "mnistfx.constants": 0,
    "mnistfx.rng": 0,
    "mnistfx._checks": 0,
    "mnistfx._types": 0,
    "mnistfx._io": 0,
    "mnistfx._imports": 0,
    "mnistfx.runtime": 0,
    "mnistfx.data": 1,
    "mnistfx.models": 2,
    "mnistfx.training": 3,
    "mnistfx.trained": 4,
    "mnistfx.bench": 4,
}


def _layer(module: str) -> int:
    return next(rank for prefix, rank in LAYERS.items() if module == prefix or module.startswith(prefix + "."))


def test_imports_run_one_way_between_layers_without_cycles_or_hiding_in_functions():
    graph = {}
    for path in LIBRARY:
        module = _module(path)
        top, nested = _imports(path)
        if module in ("mnistfx", "mnistfx.__main__"):
            continue
        assert not nested, f"{module} imports {sorted(nested)} inside a function"
        for dep in top:
            assert _layer(dep) <= _layer(module), f"{module} (layer {_layer(module)}) imports {dep} from above"
        graph[module] = top
    assert {_layer(m) for m in graph} == set(LAYERS.values())  # every module is in a layer
    done, visiting = set(), []

    def visit(module):
        assert module not in visiting, "import cycle: " + " -> ".join(visiting[visiting.index(module) :] + [module])
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
    from mnistfx.constants import NOTEBOOK_MODELS
    from mnistfx.constants import OPTIMIZERS as OPTIMIZER_NAMES
    from mnistfx.models.adversarial_cnns import ADV_ARCHS
    from mnistfx.models.dp_cnn import DP_ARCHS
    from mnistfx.models.notebook_cnns import ARCHS
    from mnistfx.training.optim import OPTIMIZERS

    assert mnistfx.MODELS == (*NOTEBOOK_MODELS, "resnet", *DP_ARCHS, *ADV_ARCHS) == mnistfx.model_names()[:7]
    assert NOTEBOOK_MODELS == tuple(ARCHS)
    assert OPTIMIZER_NAMES == tuple(OPTIMIZERS)


def test_the_package_root_and_the_cli_constants_load_without_torch():
    code = (
        "import sys, mnistfx, mnistfx.training.config, mnistfx.constants, mnistfx_cli.main; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(mnistfx.__version__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_cli_is_installed_as_mnistfx_cli_not_cli(tmp_path):
    # From a folder outside the checkout, only the installed names are importable.
    code = (
        "import importlib.util as u, sys; sys.exit(0 if u.find_spec('mnistfx_cli') and not u.find_spec('cli') else 1)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path).returncode == 0
    src = tmp_path / "src"  # a copy, so that building leaves nothing in the checkout
    for name in ("mnistfx", "cli"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--disable-pip-version-check",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("mnistfx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert (
        "mnistfx_cli/main.py" in names
        and "mnistfx/training/loop.py" in names
        and "mnistfx/trained/web/index.html" in names
    )
    assert "mnistfx/py.typed" in names
    assert not any(n.startswith("cli/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mnistfx = mnistfx_cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def _unannotated(qualname: str, fn, skip_self: bool = False) -> list[str]:
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1 if skip_self else 0 :]
    missing = [f"{qualname}({p.name})" for p in params if p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty and not qualname.endswith("__init__"):
        missing.append(f"{qualname} returns")
    return missing


def test_every_public_function_and_method_is_fully_annotated():
    missing = []
    for name in mnistfx.__all__:
        obj = getattr(mnistfx, name)
        if inspect.isfunction(obj):
            missing += _unannotated(name, obj)
        elif inspect.isclass(obj) and not issubclass(obj, Exception):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if inspect.isfunction(fn):
                    missing += _unannotated(f"{name}.{attr}", fn, skip_self=not isinstance(member, staticmethod))
    assert not missing, f"not annotated: {', '.join(missing)}"
    assert (ROOT / "mnistfx" / "py.typed").is_file()  # type checkers read the annotations of the installed package
