"""The one place where the library's words become the command line's: an error names arguments as
Python spells them (`` `overwrite=True` ``, `` `lr` ``, `` `resume(run_dir)` ``); the CLI shows flags."""

from __future__ import annotations

import re

# Arguments whose flag is not their own name with dashes, and phrases the command line says otherwise.
_FLAG = {"path": "--out", "checkpoint_dir": "--out", "out_dir": "--out", "run_dir": "--resume"}
_PHRASES = {
    "start the run again with `train(config)`": "start the run again without --resume",
    "continue it with `resume(run_dir)`": "continue it with --resume and the run's folder",
    "set `ensemble=1`, or train in one process": "drop --ensemble or --nproc",
    "import yours with `import_model` or `register_model`": "pass --model MODULE:ATTR to import yours (in Python: "
    "mnistfx.register_model)",
    "`fetch_mnist(force=True)`": "`mnistfx data --force`",
    "`fetch_mnist()`": "`mnistfx data`",
}
_RESUME = re.compile(r"`resume\(([^`]*)\)`")  # resume(FOLDER) -> --resume FOLDER
_ARGUMENT = re.compile(r"`([a-z][a-z0-9_]*)(?:=([^`]*))?`")


def _flag(match: re.Match) -> str:
    name, value = match.group(1), match.group(2)
    if name in _FLAG and value is None:
        return _FLAG[name]
    flag = "--" + name.replace("_", "-")
    if value is None:
        return flag
    value = value.strip("'\"")
    if value == "True":
        return flag
    if value == "False":
        return "--no-" + name.replace("_", "-")
    return f"{flag} {value}"


def in_flags(message: str) -> str:
    """``message`` with the library's arguments as the command line's flags."""
    for words, flags in _PHRASES.items():
        message = message.replace(words, flags)
    message = _RESUME.sub(lambda m: f"--resume {m.group(1)}", message)
    return _ARGUMENT.sub(_flag, message)
