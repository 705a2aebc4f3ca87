"""The one place where the library's words become the command line's: an error names arguments as
Python spells them (`` `overwrite=True` ``, `` `lr` ``, `` `resume(run_dir)` ``); the CLI shows flags."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

# Arguments whose flag is not their own name with dashes, and phrases the command line says otherwise.
_FLAG = {
    "path": "--out",
    "checkpoint_dir": "--out",
    "out_dir": "--out",
    "run_dir": "--resume",
    "clip": "--dp-clip",
    "noise_multiplier": "--dp-noise",
    "delta": "--dp-delta",
}
# Arguments of library functions the command line never calls with a value of the user's (the privacy
# accountant's, the schedules', a step of one's own): they stay as they are.
_NO_FLAG = {
    "accountant",
    "average",
    "decay_steps",
    "epsilon",
    "final",
    "rise",
    "sample_rate",
    "step",
    "steps",
    "total_steps",
    "warmup_steps",
    "div",
    "final_div",
    "step_size",
    "name",  # corrupt's corruption
    "start",  # corrupt's position of the first image
    "ramp_steps",  # make_adversarial_step's; the command line's is --adv-warmup, a fraction
}
_PHRASES = {
    "start the run again with `train(config)`": "start the run again without --resume",
    "continue it with `resume(run_dir)`": "continue it with --resume and the run's folder",
    "set `ensemble=1`, or train in one process": "drop --ensemble or --nproc",
    "import yours with `import_model` or `register_model`": "pass --model MODULE:ATTR to import yours (in Python: "
    "mnistfx.register_model)",
    "`fetch_mnist(force=True)`": "`mnistfx data --force`",
    "`fetch_mnist()`": "`mnistfx data`",
}
# A span of the message's own words stands alone: a backtick inside a path or a name the message quotes
# (``/tmp/a`lr`b``, ``'`lr`'``) is the user's, and stays as it is.
_ALONE = r"(?<![^\s(])"
_RESUME = re.compile(_ALONE + r"`resume\(([^`]*)\)`")  # resume(FOLDER) -> --resume FOLDER
_ARGUMENT = re.compile(_ALONE + r"`([a-z][a-z0-9_]*)(?:=([^`\s]*))?`(?![^\s,.;:)])")


def _flag(name: str, value: str | None) -> str:
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


def in_flags(message: str, here: Collection[str] | None = None, elsewhere: Mapping[str, str] | None = None) -> str:
    """``message`` with the library's arguments as the command line's flags.

    ``here``: the flags of the command that ran (default: take every flag as its own); a flag that only
    another command has is shown with that command (``elsewhere``: flag -> command), as in
    ``mnistfx data --wheel``.
    """

    def shown(match: re.Match) -> str:
        if match.group(1) in _NO_FLAG:
            return match.group(0)
        words = _flag(match.group(1), match.group(2))
        flag = words.split()[0]
        if here is not None and elsewhere and flag not in here and flag in elsewhere:
            return f"`mnistfx {elsewhere[flag]} {words}`"
        return words

    for words, flags in _PHRASES.items():
        message = message.replace(words, flags)
    message = _RESUME.sub(lambda m: f"--resume {m.group(1)}", message)
    return _ARGUMENT.sub(shown, message)
