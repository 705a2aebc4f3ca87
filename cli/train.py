"""``mnistfx train``: a recipe with the options given, or ``--resume`` of an interrupted run."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import threading
import time

import click
from click.core import ParameterSource

import mnistfx
from mnistfx.constants import MAX_CHECKPOINT_EVERY, MAX_NPROC, MODELS, OPTIMIZERS, OWN_OPTIMIZER
from mnistfx.training.config import RECIPES

from .flags import in_flags
from .launch import launched, next_step, stop_with_parent
from .options import (
    console,
    json_option,
    named_model,
    positive,
    printable,
    quiet_torch_logs,
    recipe_values,
)


def _epoch_line(e: dict) -> str:
    val = (
        "no validation split"
        if e["val_loss"] is None
        else f"val loss {e['val_loss']:.4f}  val acc {100 * e['val_accuracy']:.2f}%"
    )
    privacy = f"  ε {e['epsilon']:.2f}" if "epsilon" in e else ""
    return (
        f"epoch {e['epoch']:>3}  train loss {e['train_loss']:.4f}  {val}{privacy}  "
        f"{e['img_per_s']:,.0f} img/s  {e['seconds']:.1f}s"
    )


class _MemberValues(click.ParamType):
    """A number, or one per ensemble member separated by commas (``3e-4,1e-3``), each in a range."""

    name = "X[,X...]"

    def __init__(self, one: click.ParamType):
        self.one = one

    def convert(self, value, param, ctx):
        if isinstance(value, (float, tuple)):
            return value
        parts = [self.one.convert(part.strip(), param, ctx) for part in str(value).split(",")]
        return parts[0] if len(parts) == 1 else tuple(parts)


def _config_option(field: dataclasses.Field):
    """The ``mnistfx train`` option of a :class:`~mnistfx.TrainConfig` field, from the field's metadata: its
    flag, type, range or choices, and help (with the recipes' values where they differ). Unset, it is ``None``:
    the recipe's value stands."""
    meta, flag = field.metadata, "--" + field.name.replace("_", "-")
    help = meta["help"] + (f" ({recipe_values(field.name)})" if meta["recipes"] else "")
    if field.type == "bool":  # a flag that flips the default
        flag = flag if not field.default else "--no-" + flag[2:]
        return click.option(flag, field.name, is_flag=True, flag_value=not field.default, default=None, help=help + ".")
    if meta["choices"]:
        kind: click.ParamType = click.Choice(meta["choices"])
    elif meta["path"]:
        kind = click.Path()
    elif field.type.startswith("int"):
        kind = click.IntRange(meta["lo"], meta["hi"])
    elif field.type.startswith("float") and meta["open_lo"] and meta["hi"] is None:  # a positive number
        kind = _Positive()
    elif field.type.startswith("float"):
        kind = click.FloatRange(meta["lo"], meta["hi"], min_open=meta["open_lo"], max_open=meta["open_hi"])
    else:
        kind = click.STRING
    if meta["per_member"]:
        kind, help = _MemberValues(kind), help + "; with --ensemble, one per member separated by commas (a sweep)"
    if field.name == "optimizer":
        return click.option(flag, field.name, type=kind, callback=_optimizer_name, help=help + ".")
    return click.option(flag, field.name, type=kind, help=help + ".")


def _optimizer_name(ctx, param, value):
    """A click callback: --optimizer is a built-in optimiser's name or MODULE:ATTR."""
    if value is not None and value not in OPTIMIZERS and not OWN_OPTIMIZER.fullmatch(value):
        raise click.BadParameter(
            f"{value!r} is not one of {', '.join(OPTIMIZERS)}, nor MODULE:ATTR naming an optimiser of your own"
        )
    return value


class _Positive(click.ParamType):
    """A finite number > 0 (click's ranges let nan and inf through)."""

    name = "float"

    def convert(self, value, param, ctx):
        return positive(ctx, param, click.FLOAT.convert(value, param, ctx))


def _config_options(command):
    """Every command-line field of :class:`~mnistfx.TrainConfig` as an option of ``command``."""
    for field in reversed(dataclasses.fields(mnistfx.TrainConfig)):
        if field.metadata:  # model and recipe have their own argument and option
            command = _config_option(field)(command)
    return command


@click.command()
@click.argument("model", metavar="MODEL", required=False)
@click.option(
    "--recipe",
    "recipe_name",
    type=click.Choice(tuple(RECIPES)),
    default="default",
    show_default=True,
    help="default: the notebook's recipe (15 epochs for tuned); fast: tuned to 99.1 % in under a minute; "
    "dp: DP-SGD's published recipes for dpcnn and dpcnn_tanh; adversarial: PGD training of smallcnn at "
    "eps 0.3. The options below override single values.",
)
@_config_options
@click.option("--out", type=click.Path(), help="Output folder (default: runs/MODEL-seedN, runs/MODEL-RECIPE-seedN).")
@click.option(
    "--checkpoint-every",
    type=click.IntRange(1, MAX_CHECKPOINT_EVERY),
    help="Also write the checkpoint every N steps (it is always written after each epoch).",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(),
    help="Continue the interrupted run in this folder, with its own settings.",
)
@click.option("--overwrite", is_flag=True, help="Replace the run the output folder holds (finished or not).")
@click.option("--no-test", is_flag=True, help="Do not evaluate on the test set (for sweeps: choose on validation).")
@click.option(
    "--nproc",
    type=click.IntRange(1, MAX_NPROC),
    help="Train data-parallel in N processes on this machine (torchrun's launcher; each takes its share of "
    "every batch). Under torchrun itself, leave it out.",
)
@json_option("Print a JSON summary on stdout (stderr: only a progress bar on a terminal, and errors).")
def train(model, recipe_name, out, checkpoint_every, resume_dir, overwrite, no_test, nproc, as_json, **settings):
    """Train MODEL with a recipe; write weights, history and a checkpoint.

    MODEL is tuned, cnn, resnet, dpcnn, dpcnn_tanh, smallcnn or madrycnn, or a model of your own as MODULE:ATTR (e.g.
    mymodels:mlp, the Model mlp in ./mymodels.py; only name code you trust). The checkpoint
    (checkpoint.safetensors in the output folder) is written after every epoch; `mnistfx train --resume
    FOLDER` continues an interrupted run from it, bit for bit (name MODULE:ATTR again for a model of
    your own).

    Data-parallel: `--nproc N` on one machine, or `torchrun ... -m mnistfx train ...`
    (docs/library/data-parallel.md).
    """
    from mnistfx.training import distributed

    parallel = distributed.from_environment()  # set when torchrun (or --nproc) started this process
    if resume_dir is not None:
        _refuse_settings_with_resume(click.get_current_context())
    elif model is None:
        raise click.UsageError(
            f"Missing argument 'MODEL': name a model ({', '.join(MODELS)} or MODULE:ATTR), or pass --resume FOLDER."
        )
    model = None if model is None else named_model(model)
    spec = settings["optimizer"]
    optimizer = mnistfx.import_optimizer(spec) if spec is not None and OWN_OPTIMIZER.fullmatch(spec) else None
    where = {"since": time.time()}  # and the run folder, once known: what a stopped rank tells the user
    if parallel is not None:
        signal.signal(signal.SIGTERM, functools.partial(_stopped, parallel.rank, where))
        _watch_stops(parallel.rank, where)
        if launched():
            stop_with_parent()
        # the group is left only by a rank whose run finished: one that a lost peer broke cannot be torn down
        # (see mnistfx_cli.main.leave), and a failed rank leaves the process without it
        distributed.start(parallel)
        distributed.check_same_work(parallel, resume_dir is not None)
    if resume_dir is not None:
        # only rank 0 may see the run folder: it checks the checkpoint, then sends it to the others
        ckpt = (
            _resume_checkpoint(resume_dir, model, optimizer)
            if parallel is None
            else distributed.on_main(
                parallel,
                lambda: _resume_checkpoint(resume_dir, model, optimizer),
                (mnistfx.MnistfxError, click.UsageError),
            )
        )
        cfg = ckpt.config if ckpt is not None else None
        out = mnistfx.run_folder(resume_dir) if parallel is None or parallel.main else resume_dir
    else:
        given = {name: value for name, value in settings.items() if value is not None}
        cfg = mnistfx.recipe(model, recipe_name, **given)
        if optimizer is not None:
            _refuse_optimizer_settings(given)
        if "momentum" in given and cfg.optimizer not in ("sgd", spec):
            raise click.UsageError(
                f"--momentum is sgd's, and this run's optimizer is {cfg.optimizer}: pass --optimizer sgd with it"
            )
        out = out or mnistfx.default_run_dir(cfg)
    where["out"] = out
    if nproc and nproc > 1 and parallel is None:  # checked here once, not by each process
        from mnistfx.training.runs import check_run_start

        from .launch import launch

        distributed.check_processes(nproc, cfg, resuming=resume_dir is not None)
        try:
            check_run_start(out, resuming=ckpt if resume_dir is not None else None, overwrite=overwrite)
        except mnistfx.RunFolderError as e:
            raise click.UsageError(in_flags(str(e))) from None
        raise click.exceptions.Exit(launch(nproc, out))
    mnistfx.use_compile_cache()
    quiet_torch_logs()
    try:
        run = _run_with_progress(
            console(stderr=as_json),
            cfg,
            out,
            resume_dir is not None,
            settings["data_root"],
            checkpoint_every or 0,
            overwrite,
            not no_test,
            quiet=as_json,
            parallel=parallel,
            optimizer=optimizer,
        )
    except BaseException:
        if parallel is not None:  # stopping already: the launcher's SIGTERM must not cut into the error line
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
    if parallel is None or parallel.main:  # rank 0 writes the run and reports
        _report(run, out, as_json)
    if parallel is not None:
        distributed.stop()


def _report(run, out, as_json):
    """Save a finished run in ``out`` and say what it scored (JSON on stdout with ``as_json``)."""
    paths = mnistfx.save_run(run, out)
    if as_json:
        click.echo(
            mnistfx.to_json({**run.summary(), "weights": str(paths["weights"]), "history_file": str(paths["history"])})
        )
        return
    out_console = console()
    for line in _result_lines(run):
        out_console.print(line)
    out_console.print(printable(f"wrote {paths['weights']} and {paths['history']}"))


class _Stopped(mnistfx.MnistfxError):
    """A data-parallel rank stopped by a signal (the launcher's, or torchrun's after another rank
    failed). Every rank would say the same, so only rank 0 says it (``quiet`` elsewhere), and under
    ``--nproc`` none does: the launcher speaks for the run, or the rank that failed did."""

    def __init__(self, rank: int, signum: int, where: dict):
        fix = (
            "run the command again (no checkpoint was written yet)"
            if "out" not in where
            else next_step(where["out"], where["since"])
        )
        super().__init__(f"rank {rank} was stopped ({signal.Signals(signum).name}): the run stops; {fix}")
        self.quiet = rank != 0 or launched()


_HANDLED = threading.Event()  # the signal reached Python: the rank is stopping by itself
_STOP_GRACE = 2.0  # seconds the main thread has to act on a stop before the watcher ends the process


def _stopped(rank, where, signum, frame):
    """SIGTERM to a data-parallel rank: one line (from rank 0), once."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _HANDLED.set()
    raise _Stopped(rank, signum, where)


def _interrupted(signum, frame):
    """Ctrl-C to a data-parallel rank: Python's own KeyboardInterrupt, noted for the watcher."""
    _HANDLED.set()
    raise KeyboardInterrupt


def _watch_stops(rank: int, where: dict) -> None:
    """End this rank promptly on SIGTERM or SIGINT, even while its main thread waits in C++ (the
    rendezvous, a collective), where Python's handlers run only once the call returns (minutes).
    The signal's wakeup byte wakes a thread; if the main thread has not acted on it within
    :data:`_STOP_GRACE`, the thread says what :class:`_Stopped` would and ends the process."""
    signal.signal(signal.SIGINT, _interrupted)
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def watch():
        while True:
            signum = os.read(read, 1)[0]
            if signum not in (signal.SIGTERM, signal.SIGINT):
                continue
            time.sleep(_STOP_GRACE)
            if _HANDLED.is_set():
                return
            stopped = _Stopped(rank, signum, where)
            if not stopped.quiet:
                sys.stderr.write(f"error: {printable(str(stopped))}\n")
                sys.stderr.flush()
            os._exit(1)

    threading.Thread(target=watch, daemon=True, name="mnistfx-stop-watch").start()


def _resume_checkpoint(resume_dir, model, optimizer):
    """The checkpoint of the run ``resume_dir`` holds, which must be of ``model`` if one is named (and of the
    optimiser of its own given, if it had one)."""
    ckpt = mnistfx.load_checkpoint(resume_dir, optimizer=optimizer)  # a folder, or the checkpoint file itself
    if model is not None and model != ckpt.config.model:
        raise click.UsageError(
            f"{resume_dir} is a run of {ckpt.config.model}, not {model}: drop MODEL or name {ckpt.config.model}"
        )
    return ckpt


def _result_lines(run) -> list[str]:
    """What a finished run scored: test (unless skipped) and validation, and an ensemble's members."""

    def pct(x):
        return f"{100 * x:.2f}%"

    test = (
        f"test accuracy {pct(run.test.accuracy)} ({run.test.correct}/{run.test.n}), " if run.test else "test skipped, "
    )
    val = f"val {pct(run.val.accuracy)}" if run.val else "no validation split"
    lines = [f"{test}{val}, {run.seconds:.0f}s (compile {run.compile_seconds:.0f}s)"]
    members = run.member_test or run.member_val
    swept = run.config.per_member
    if run.member_val and swept:  # a sweep: each member's values and validation accuracy
        for i, m in enumerate(run.member_val):
            values = "  ".join(f"{name} {run.config.member_values(name)[i]:g}" for name in swept)
            lines.append(f"member {i}: {values}  val {pct(m.accuracy)}")
    if members:
        accs = [m.accuracy for m in members]
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / max(len(accs) - 1, 1)) ** 0.5
        lines.append(
            f"{len(accs)} members, each alone ({'test' if run.member_test else 'val'}): "
            f"{' '.join(pct(a) for a in accs)} (mean {pct(mean)} ± {100 * std:.2f})"
        )
    return lines


def _run_with_progress(
    con, cfg, out, resuming, data_root, checkpoint_every, overwrite, test, quiet, parallel, optimizer=None
):
    """Train (or resume) with a progress bar per epoch (on a terminal) and a line per finished epoch
    (unless ``quiet``: with --json, stderr holds only a transient bar and errors)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  {task.fields[speed]}"),
        TimeElapsedColumn(),
        console=con,
        transient=True,
        disable=not con.is_terminal or (parallel is not None and not parallel.main),
    )
    state = {}

    def on_event(kind, **info):
        task = state["task"]
        if kind == "config" and not quiet:
            con.print(
                printable(
                    ("resuming: " if resuming else "config: ")
                    + " ".join(f"{k}={v}" for k, v in info["config"].to_dict().items())
                )
            )
        elif kind == "loading":
            progress.update(task, description="loading MNIST…")
        elif kind == "start":
            state["total"], state["epochs"] = info["steps_per_epoch"], info["epochs"]
            progress.update(
                task,
                total=state["total"],
                completed=info["step"],
                description=f"epoch {info['epoch']}/{state['epochs']}",
            )
        elif kind == "compiling":
            progress.update(task, description="compiling… (first step)")
        elif kind == "step":
            progress.update(
                task,
                completed=info["step"],
                loss=f"{info['loss']:.4f}",
                speed=f"{info['img_per_s']:,.0f} img/s",
                description=f"epoch {info['epoch']}/{state['epochs']}",
            )
            if info["step"] == state["total"] and info["epoch"] < state["epochs"]:
                progress.reset(task, description=f"epoch {info['epoch'] + 1}/{state['epochs']}", loss="-", speed="")
        elif kind == "epoch" and not quiet:
            progress.console.print(_epoch_line(info))

    report = on_event if parallel is None or parallel.main else None  # rank 0 reports
    with progress:
        state["task"] = progress.add_task("starting…", total=None, loss="-", speed="")
        try:
            if resuming:
                return mnistfx.resume(
                    out,
                    data_root=data_root,
                    on_event=report,
                    checkpoint_every=checkpoint_every,
                    test=test,
                    parallel=parallel,
                    optimizer=optimizer,
                )
            return mnistfx.train(
                cfg,
                on_event=report,
                checkpoint_dir=out,
                checkpoint_every=checkpoint_every,
                overwrite=overwrite,
                test=test,
                parallel=parallel,
                optimizer=optimizer,
            )
        except mnistfx.RunFolderError as e:
            raise click.UsageError(in_flags(str(e))) from None


# the settings an optimiser of one's own brings itself (one per member of a sweep may still be given)
_OPTIMIZER_SETTINGS = ("lr", "weight_decay", "momentum", "schedule", "warmup", "decay", "gamma")


def _refuse_optimizer_settings(given: dict) -> None:
    for name in _OPTIMIZER_SETTINGS:
        if name in given and not isinstance(given[name], tuple):
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(
                f"an optimiser of your own (--optimizer MODULE:ATTR) brings its own {flag[2:]}: drop {flag} (with "
                f"--ensemble, {flag} A,B,... gives each member its own value)"
                if name in ("lr", "weight_decay", "momentum")
                else f"an optimiser of your own (--optimizer MODULE:ATTR) brings its own schedule: drop {flag}"
            )


_RESUME_KEEPS = {"model", "resume_dir", "checkpoint_every", "as_json", "data_root", "no_test", "nproc"}
# --optimizer MODULE:ATTR names a run's own optimiser again (as MODEL names its own model)


def _refuse_settings_with_resume(ctx):
    """--resume continues a run as it was configured: any other setting given is a mistake."""
    for p in ctx.command.params:
        own_optimizer = p.name == "optimizer" and OWN_OPTIMIZER.fullmatch(ctx.params.get("optimizer") or "")
        if (
            p.name not in _RESUME_KEEPS
            and not own_optimizer
            and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE
        ):
            raise click.UsageError(f"--resume continues a run with the settings it was started with: drop {p.opts[0]}")
