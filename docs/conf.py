"""Sphinx configuration of the documentation site: Markdown pages (MyST) and the API reference (autodoc).

Build it strictly (``make docs``): ``python -m sphinx -W --keep-going -n -b html docs docs/_build/html``.
The build needs no network: nothing is fetched (no intersphinx), and the theme's assets are local.
"""

import dataclasses
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package as this checkout has it, installed or not

import mnistfx  # noqa: E402 (after the path above)

project = "mnistfx"
author = "the mnistfx authors"
copyright = "2026, the mnistfx authors"  # as LICENSE has it
version = release = mnistfx.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "make_figures.py", "Thumbs.db", ".DS_Store"]

# Every reference must resolve: a broken link or cross-reference is a warning, and the build
# (-W) fails on warnings.
nitpicky = True
# Except references to other packages' objects (the signatures' torch.Tensor, pathlib.Path,
# collections.abc.Callable, ...): without intersphinx, which would fetch their inventories over the
# network at build time, they cannot be linked, so they stay plain text. The packages are listed one by
# one (add one here when a signature names it), so that a broken reference to mnistfx still fails.
nitpick_ignore_regex = [(r"py:.*", r"(torch|numpy|os|pathlib|collections\.abc|typing)\..+")]
# Internal classes that public signatures name (a parameter's or a return value's type): not part of the
# API, so not documented; the signature shows their name, unlinked. The docstrings say what they are.
nitpick_ignore = [
    ("py:class", "mnistfx.models.torch_module.FunctionalModule"),  # to_module's nn.Module
    ("py:class", "mnistfx.trained.server.Predictor"),  # DigitServer's, made by make_server
]

# autodoc: the API reference documents each public name as mnistfx.NAME (see docs/api/).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False
# The type aliases of mnistfx._types (internal), as what they stand for: a signature naming ``StrPath``
# shows ``str | os.PathLike[str]``. Without them autodoc cannot evaluate a signature whose alias names a
# module its own module does not import (``os``, ``torch``, ``np``) and shows the aliases' names, which
# link nowhere. (Sphinx 9 and later: older versions fail on ``StrPath | None``.)
autodoc_type_aliases = {
    "StrPath": "str | os.PathLike[str]",
    "Key": "int | torch.Generator",
    "Device": "str | torch.device",
    "Tensors": "dict[str, torch.Tensor]",
    "Gray": "numpy.ndarray | torch.Tensor",
    "ImageInput": "str | os.PathLike[str] | bytes | numpy.ndarray | torch.Tensor",
}

# napoleon: the docstrings are Google style (``Arguments:``, ``Returns:``, ``Raises:``, ``Attributes:``).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # a class's "Attributes:" as fields of its description, as "Arguments:" are

# MyST: Markdown pages; headings get anchors so that pages can link to sections (page.md#section).
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"mnistfx {release}"
html_static_path: list[str] = []


def _public_target(target: str) -> str | None:
    """``mnistfx.<module>.<Name>[.<member>]`` -> ``mnistfx.<Name>[.<member>]`` when <module> holds
    the public name <Name> (``mnistfx._PUBLIC``), else ``None``."""
    parts = target.split(".")
    if len(parts) < 3 or parts[0] != "mnistfx":
        return None
    for i in range(2, len(parts)):
        module, name = ".".join(parts[1:i]), parts[i]
        if mnistfx._PUBLIC.get(name) == module:
            return ".".join(["mnistfx", name, *parts[i + 1 :]])
    return None


def _resolve_public(app, env, node, contnode):
    """Resolve a reference to a public name by its module path (as type hints name it) to the page that
    documents it as ``mnistfx.NAME``; any other missing reference is left to fail the build."""
    if node.get("refdomain") != "py":
        return None
    target = _public_target(node.get("reftarget", ""))
    if target is None:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], target, node, contnode)


def _signature(app, what, name, obj, options, signature, return_annotation):
    """Two repairs of autodoc's signatures. An alias of ``autodoc_type_aliases`` inside a union
    (``StrPath | None``) comes as ``TypeAliasForwardRef('...')``: it becomes what it stands for. A
    dataclass field's ``default_factory`` comes as ``<factory>``, which Sphinx cannot parse (the whole
    signature then loses its links): it becomes the empty ``{}`` or ``[]`` it makes (``...`` for another
    factory)."""
    if signature and "<factory>" in signature and dataclasses.is_dataclass(obj):
        factories = [f.default_factory for f in dataclasses.fields(obj) if f.init]
        made = [
            repr(f()) if f in (dict, list, set, tuple) else "..." for f in factories if f is not dataclasses.MISSING
        ]
        pieces = signature.split("<factory>")
        if len(made) == len(pieces) - 1:
            signature = "".join(piece + value for piece, value in zip(pieces, [*made, ""], strict=True))
    alias = re.compile(r"TypeAliasForwardRef\('([^']*)'\)")
    return tuple(alias.sub(r"\1", text) if text else text for text in (signature, return_annotation))


def _prose_first_lines(app, what, name, obj, options, lines):
    """Keep napoleon from reading a type into prose. It reads the first line of a ``Returns:`` section,
    and the first line of a property's docstring, as ``type: text`` when the line holds a colon (``The
    module: ...`` would make "The module" a type); mnistfx's docstrings give no types (the annotations
    do), so each such line gets an empty type, a leading ``: ``, before napoleon reads it."""
    if what in ("property", "attribute", "data") and lines:
        lines[0] = ": " + lines[0]
        return
    for i, line in enumerate(lines[:-1]):
        if line.strip() == "Returns:" and lines[i + 1].strip():
            text = lines[i + 1]
            indent = len(text) - len(text.lstrip())
            lines[i + 1] = text[:indent] + ": " + text[indent:]


def setup(app):
    app.connect("missing-reference", _resolve_public)
    app.connect("autodoc-process-signature", _signature)
    app.connect("autodoc-process-docstring", _prose_first_lines, priority=400)  # before napoleon's (500)
