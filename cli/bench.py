"""``mnistfx bench``: images per second of the train step and of inference, eager and compiled."""

import click

import mnistfx
from mnistfx.constants import (BENCH_BATCH_SIZES, BENCH_KINDS, BENCH_MAX_REPEATS, BENCH_MAX_SECONDS, MAX_BATCH_SIZE,
                               MODELS, PRECISIONS)

from .options import console, data_root_option, device_option, json_option, positive, quiet_torch_logs


@click.command()
@device_option
@click.option("--model", type=click.Choice(MODELS), default="tuned", show_default=True)
@click.option("--batch-size", "batch_sizes", type=click.IntRange(1, MAX_BATCH_SIZE), multiple=True,
              help=f"Batch size to measure (repeatable; default: {', '.join(map(str, BENCH_BATCH_SIZES[:-1]))} and "
                   f"{BENCH_BATCH_SIZES[-1]}).")
@click.option("--kind", "kinds", type=click.Choice(BENCH_KINDS), multiple=True,
              help="What to measure (repeatable; default: both).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="bf16: autocast the training forward pass.")
@click.option("--seconds", type=click.FloatRange(0, BENCH_MAX_SECONDS, min_open=True), callback=positive, default=1.0, show_default=True,
              help="About how long each timed block runs.")
@click.option("--repeats", type=click.IntRange(1, BENCH_MAX_REPEATS), default=3, show_default=True,
              help="Timed blocks per mode; the median is reported.")
@data_root_option
@json_option("Print the results as JSON.")
def bench(device, model, batch_sizes, kinds, precision, seconds, repeats, data_root, as_json):
    """Images per second of the train step and of inference, eager and compiled."""
    env = mnistfx.environment(device)
    info = {"model": model, "device": env["device"], "device_name": env["device_name"], "precision": precision,
            "torch": env["torch"], "mnistfx": env["mnistfx"]}
    mnistfx.use_compile_cache()
    quiet_torch_logs()
    ds = mnistfx.load_mnist(data_root)
    out = console(stderr=as_json)
    out.print(" ".join(f"{k}={v}" for k, v in info.items()))
    from rich.table import Table

    table = Table("kind", "batch", "eager img/s", "compiled img/s", "speedup", "compile s", title="throughput")
    with out.status("measuring… (the first call of each compiled function compiles)") as status:
        def on_result(r):
            table.add_row(r["kind"], str(r["batch_size"]), f"{r['eager']:,.0f}", f"{r['compiled']:,.0f}",
                          f"{r['speedup']:.2f}×", f"{r['compile_seconds']:.1f}")
            status.update(f"measured {r['kind']} at batch {r['batch_size']}…")

        results = mnistfx.benchmark(model, device=device, batch_sizes=batch_sizes or BENCH_BATCH_SIZES,
                                    kinds=kinds or BENCH_KINDS, precision=precision, seconds=seconds,
                                    repeats=repeats, data=ds, on_result=on_result)
    if as_json:
        click.echo(mnistfx.to_json({**info, "results": results}))
    else:
        out.print(table)
