"""Importing an object of the user's own, named ``MODULE:ATTR`` (a model, an optimiser)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .errors import ConfigError


def import_attr(spec: str, what: str, example: str) -> Any:
    """The attribute ``spec`` (``"package.module:attr"``) names; ``what`` says what it is for in errors, and
    ``example`` is a spec to show. The current folder is searched first, so ``mymodels:mlp`` finds
    ``./mymodels.py``. Importing runs the module's code: only name modules you trust.

    Raises:
        ConfigError: ``spec`` is not MODULE:ATTR, its module cannot be imported or fails, or it has no ATTR.
    """
    module_name, sep, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{spec!r} is not MODULE:ATTR (for example {example})")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # for this import only: later imports must not find files of the current folder first
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        hint = (
            f": run from the folder that holds {module_name.replace('.', '/')}.py, or install it"
            if e.name and (module_name + ".").startswith(e.name + ".")
            else ""
        )  # else its own import failed
        raise ConfigError(f"cannot import {module_name!r} for {what} {spec} ({e}){hint}") from None
    except (Exception, SystemExit) as e:
        raise ConfigError(
            f"importing {module_name!r} for {what} {spec} failed: {type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:120]}"
        ) from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    return getattr(module, attr, None)
