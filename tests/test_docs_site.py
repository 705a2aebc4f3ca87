"""The documentation site's API reference documents every public name (`make docs`, which CI runs, builds
the site strictly: every warning, every broken reference, fails it)."""

import re
from collections import Counter
from pathlib import Path

import pytest

import mnistfx

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"

# A name's entry on an API page: `.. autofunction:: mnistfx.NAME` (any auto directive, in an {eval-rst}
# block or an .rst page), its MyST form ```{autoclass} mnistfx.NAME, or a hand-written
# `.. py:data:: NAME` with `:module: mnistfx` (for values, whose docstring autodoc cannot find).
_AUTO = re.compile(r"^\s*(?:\.\. auto\w+::|```\{auto\w+\})\s+mnistfx\.(\w+)\s*$", re.M)
_PY = re.compile(r"^\s*\.\. py:\w+::\s+(\w+)\s*\n(?:\s+:[\w-]+:.*\n)*?\s+:module: mnistfx\s*$", re.M)


def _documented() -> Counter:
    names: Counter = Counter()
    for page in sorted(API.rglob("*")):
        if page.suffix in (".md", ".rst"):
            text = page.read_text(encoding="utf-8")
            names.update(_AUTO.findall(text) + _PY.findall(text))
    return names


@pytest.mark.fast
def test_the_api_reference_documents_every_public_name_once():
    documented = _documented()
    missing = sorted(set(mnistfx.__all__) - set(documented))
    assert not missing, f"not in docs/api/: {', '.join(f'mnistfx.{name}' for name in missing)}"
    unknown = sorted(set(documented) - set(mnistfx.__all__))
    assert not unknown, f"documented in docs/api/ but not public (mnistfx.__all__): {', '.join(unknown)}"
    twice = sorted(name for name, count in documented.items() if count > 1)
    assert not twice, f"documented more than once in docs/api/: {', '.join(twice)}"
