"""``mnistfx robustness``: trained weights under MNIST-C's corruptions and FGSM / PGD attacks."""

import click

import mnistfx

from .options import console, data_root_option, device_option, json_option, load_trained, printable, quiet_torch_logs

_ALL = "all"
_NONE = "none"


def _names(choices: tuple[str, ...]):
    """A click callback: a comma-separated list of ``choices``, ``all`` or ``none``."""

    def parse(ctx, param, value):
        if value == _ALL:
            return choices
        if value == _NONE:
            return ()
        names = [v.strip() for v in value.split(",")]
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise click.BadParameter(f"unknown {', '.join(unknown)}: choose from {', '.join(choices)}, all or none")
        return tuple(dict.fromkeys(names))

    return parse


def _radii(ctx, param, value):
    try:
        eps = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers (e.g. 0.1,0.2,0.3)") from None
    if not all(0 <= e <= 1 for e in eps) or len(eps) > 20:  # NaN fails the comparison
        raise click.BadParameter(f"{value!r}: give 1 to 20 radii from 0 to 1 (pixel units: 0.3 is 30 % of white)")
    return eps


@click.command()
@click.argument("weights", type=click.Path())
@click.option("--images", "count", type=click.IntRange(1, 10_000), help="Score only the first N images (a quick look).")
@click.option(
    "--validation",
    is_flag=True,
    help="Score the run's validation images (those its seed held out) instead of the test images: to choose a recipe.",
)
@click.option(
    "--corruptions",
    default=_ALL,
    show_default=True,
    callback=_names(mnistfx.constants.CORRUPTIONS),
    help="MNIST-C corruptions to score: all, none, or a comma-separated list.",
)
@click.option(
    "--attacks",
    default="fgsm,pgd",
    show_default=True,
    callback=_names(mnistfx.constants.ATTACKS),
    help="fgsm, pgd, both or none.",
)
@click.option("--eps", default="0.1,0.2,0.3", show_default=True, callback=_radii, help="L∞ radii of the attacks.")
@click.option("--pgd-steps", type=click.IntRange(1, 10_000), default=40, show_default=True, help="PGD steps per start.")
@click.option(
    "--pgd-step-size", type=click.FloatRange(0, 1, min_open=True), default=0.01, show_default=True, help="PGD's step."
)
@click.option("--restarts", type=click.IntRange(1, 1000), default=1, show_default=True, help="PGD random starts.")
@click.option(
    "--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Corruptions' and starts' seed."
)
@click.option(
    "--mnist-c",
    "mnist_c",
    type=click.Path(),
    help="Score MNIST-C's published files in this folder (the unpacked mnist_c.zip) instead of making the corruptions.",
)
@click.option(
    "--transfer-from",
    type=click.Path(),
    help="Also score PGD examples crafted on these other weights (a transfer attack: a check for masked gradients).",
)
@click.option(
    "--plot", "plot_dir", type=click.Path(), help="Also draw robustness.png and corruptions.png in this folder."
)
@click.option("--compile/--no-compile", default=True, help="Compile the attack step (default) or run it eagerly.")
@device_option
@data_root_option
@click.option("--model", "model_spec", metavar="MODEL", help="The weights' model when it is your own: MODULE:ATTR.")
@json_option("Print the accuracies as JSON (fractions).")
def robustness(
    weights, count, validation, corruptions, attacks, eps, pgd_steps, pgd_step_size, restarts, seed, mnist_c,
    transfer_from, plot_dir, compile, device, data_root, model_spec, as_json,
):  # fmt: skip
    """Score WEIGHTS on the test images (or its run's validation images) under MNIST-C's 15 corruptions (made with
    the benchmark's parameters, or read with --mnist-c) and under FGSM and PGD attacks (L∞)."""
    quiet_torch_logs()
    dev = mnistfx.resolve_device(device)
    w = load_trained(weights, model_spec).to(dev)
    source = mnistfx.load_model_weights(transfer_from).to(dev) if transfer_from is not None else None
    if validation and mnist_c is not None:
        raise click.UsageError("--mnist-c holds corrupted test images: score them without --validation")
    ds = mnistfx.load_mnist(data_root)
    images, labels = (ds.test_images, ds.test_labels) if not validation else _validation(w, ds)
    n = min(count or len(images), len(images))
    out = console(stderr=True)
    folder = None
    if plot_dir is not None:
        from mnistfx.trained.plots import figure_folder

        folder = figure_folder(plot_dir)
    result = mnistfx.robustness(
        w,
        images[:n],
        labels[:n],
        corruptions=corruptions,
        attacks=attacks,
        eps=eps,
        pgd_steps=pgd_steps,
        pgd_step_size=pgd_step_size,
        restarts=restarts,
        seed=seed,
        mnist_c=mnist_c,
        transfer_from=source,
        compile=compile,
        progress=None if as_json else lambda line: out.print(line, style="dim"),
    )
    written = []
    if folder is not None:
        name = w.model.name if w.members is None else f"ensemble of {w.members} {w.model.name}"
        written.append(mnistfx.plot_robustness(result, folder / "robustness.png", title=f"{name}: {weights}"[:80]))
        written.append(mnistfx.plot_corruptions(images[:1], folder / "corruptions.png", seed=seed))
    if as_json:
        split = "validation" if validation else "test"
        click.echo(
            mnistfx.to_json({"weights": str(weights), "model": w.model.name, "split": split, **result.to_dict()})
        )
        return
    _table(result, "validation" if validation else "test")
    if result.masked:
        click.echo(
            f"warning: PGD crafted on {printable(transfer_from)} broke more images than white-box PGD at ε "
            f"{', '.join(result.masked)}: the gradients of {printable(weights)} may be masked, and its PGD "
            "accuracy an overestimate (try more --restarts and --pgd-steps)",
            err=True,
        )
    for path in written:
        click.echo(printable(f"wrote {path}"))


def _validation(w, ds):
    """The validation images and labels of the run that made weights ``w``: its seed's split."""
    values = w.metadata.get("config")
    if not isinstance(values, dict):
        raise click.UsageError("these weights carry no run config (mnistfx train's do): --validation needs its split")
    try:
        config = mnistfx.TrainConfig.from_dict(values)
    except mnistfx.ConfigError as e:
        raise click.UsageError(f"the weights' run config cannot be read ({e}): --validation needs its split") from None
    if not config.val_size:
        raise click.UsageError("this run trained on all 60,000 training images: it has no validation images")
    _, val = mnistfx.train_val_split(config.seed, config.val_size)
    return ds.train_images[val], ds.train_labels[val]


def _table(result, split: str) -> None:
    from rich.table import Table

    table = Table("images", "accuracy", title=f"robustness on {result.images:,} {split} images")
    table.add_row("clean", f"{100 * result.clean:.2f}%")
    for name, acc in result.corruptions.items():
        table.add_row(name, f"{100 * acc:.2f}%")
    if result.corruptions:
        table.add_row("mean over corruptions", f"{100 * result.mean_corruption:.2f}%", style="bold")
    for attack, scores in result.attacks.items():
        starts = result.settings["restarts"]
        how = f", {result.settings['pgd_steps']} steps × {starts} start{'s' * (starts > 1)}"
        how = "" if attack == "fgsm" else how + (" from other weights" if attack == "pgd_transfer" else "")
        for e, acc in scores.items():
            table.add_row(f"{attack} ε {e}{how}", f"{100 * acc:.2f}%")
    console().print(table)
