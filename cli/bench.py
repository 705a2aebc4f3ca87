"""``mnistfx bench``: images per second of the train step and of inference, eager and compiled."""

import click

import mnistfx
from mnistfx.constants import (
    BENCH_BATCH_SIZES,
    BENCH_KINDS,
    BENCH_MAX_REPEATS,
    BENCH_MAX_SECONDS,
    MAX_BATCH_SIZE,
    MAX_ENSEMBLE,
    MODELS,
    PRECISIONS,
)

from .options import console, data_root_option, device_option, json_option, named_model, positive, quiet_torch_logs


@click.command()
@device_option
@click.option(
    "--model", default="tuned", show_default=True, help=f"{', '.join(MODELS)}, or MODULE:ATTR (a model of your own)."
)
@click.option(
    "--ensemble",
    "members",
    type=click.IntRange(2, MAX_ENSEMBLE),
    multiple=True,
    help="Instead: K members in one vmapped compiled step against K separate compiled steps (repeatable, "
    "e.g. --ensemble 2 --ensemble 8; batch size default 32).",
)
@click.option(
    "--batch-size",
    "batch_sizes",
    type=click.IntRange(1, MAX_BATCH_SIZE),
    multiple=True,
    help=f"Batch size to measure (repeatable; default: {', '.join(map(str, BENCH_BATCH_SIZES[:-1]))} and "
    f"{BENCH_BATCH_SIZES[-1]}).",
)
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(BENCH_KINDS),
    multiple=True,
    help="What to measure (repeatable; default: both).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="bf16: autocast the training forward pass.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(0, BENCH_MAX_SECONDS, min_open=True),
    callback=positive,
    default=1.0,
    show_default=True,
    help="About how long each timed block runs.",
)
@click.option(
    "--repeats",
    type=click.IntRange(1, BENCH_MAX_REPEATS),
    default=3,
    show_default=True,
    help="Timed blocks per mode; the median is reported.",
)
@data_root_option
@json_option("Print the results as JSON.")
def bench(device, model, members, batch_sizes, kinds, precision, seconds, repeats, data_root, as_json):
    """Images per second of the train step and of inference, eager and compiled (or, with --ensemble,
    of an ensemble's vmapped step against separate steps)."""
    model = named_model(model)
    env = mnistfx.environment(device)
    info = {
        "model": model,
        "device": env["device"],
        "device_name": env["device_name"],
        "cpu": env["cpu"],
        "precision": precision,
        "torch": env["torch"],
        "mnistfx": env["mnistfx"],
    }
    mnistfx.use_compile_cache()
    quiet_torch_logs()
    ds = mnistfx.load_mnist(data_root)
    out = console(stderr=as_json)
    out.print(" ".join(f"{k}={v!r}" if " " in v else f"{k}={v}" for k, v in info.items()))
    from rich.table import Table

    if members:
        return _bench_ensemble(out, info, members, batch_sizes, seconds, repeats, ds, as_json)
    table = Table("kind", "batch", "eager img/s", "compiled img/s", "speedup", "compile s", title="throughput")
    with out.status("measuring… (the first call of each compiled function compiles)") as status:

        def on_result(r):
            table.add_row(
                r["kind"],
                str(r["batch_size"]),
                f"{r['eager']:,.0f}",
                f"{r['compiled']:,.0f}",
                f"{r['speedup']:.2f}×",
                f"{r['compile_seconds']:.1f}",
            )
            status.update(f"measured {r['kind']} at batch {r['batch_size']}…")

        results = mnistfx.benchmark(
            model,
            device=device,
            batch_sizes=batch_sizes or BENCH_BATCH_SIZES,
            kinds=kinds or BENCH_KINDS,
            precision=precision,
            seconds=seconds,
            repeats=repeats,
            data=ds,
            on_result=on_result,
        )
    if as_json:
        click.echo(mnistfx.to_json({**info, "results": results}))
    else:
        out.print(table)


def _bench_ensemble(out, info, members, batch_sizes, seconds, repeats, ds, as_json):
    """``bench --ensemble K``: one table row per (K, batch size)."""
    from rich.table import Table

    table = Table(
        "K",
        "batch",
        "separate",
        "vmapped",
        "×",
        "steps: sep.",
        "vmapped",
        "×",
        "compile s",
        title="K members' training: member-images per second (steps: the steps alone)",
    )
    results = []
    with out.status("measuring… (the first call of each compiled function compiles)") as status:
        for batch in batch_sizes or (32,):

            def on_result(r, batch=batch):  # called within this iteration
                table.add_row(
                    str(r["members"]),
                    str(batch),
                    f"{r['separate']:,.0f}",
                    f"{r['vmapped']:,.0f}",
                    f"{r['speedup']:.2f}×",
                    f"{r['step_separate']:,.0f}",
                    f"{r['step_vmapped']:,.0f}",
                    f"{r['step_speedup']:.2f}×",
                    f"{r['compile_seconds']:.1f}",
                )
                status.update(f"measured {r['members']} members at batch {batch}…")

            results += mnistfx.benchmark_ensemble(
                info["model"],
                members=members,
                batch_size=batch,
                device=info["device"],
                precision=info["precision"],
                seconds=seconds,
                repeats=repeats,
                data=ds,
                on_result=on_result,
            )
    if as_json:
        click.echo(mnistfx.to_json({**info, "results": results}))
    else:
        out.print(table)
