"""``mnistfx export``: trained weights as an ONNX file or a torch.export program."""

import os

import click

import mnistfx

from .options import json_option, load_trained, model_option, printable

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}


@click.command()
@click.argument("weights", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="The file to write (its folder must exist).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(set(FORMATS.values()))),
    help="onnx (onnxruntime and others; needs the export extra) or pt2 (a torch.export program). "
    "Default: from --out's suffix (.onnx or .pt2).",
)
@model_option
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@json_option("Print what was written as JSON.")
def export(weights, out, fmt, model_spec, overwrite, as_json):
    """Write WEIGHTS as a file that runs without mnistfx. Its input `images` is uint8 (N, 28, 28), light
    digit on black as MNIST's, any N; its output `logits` is float32 (N, 10) (an ensemble's: the log of
    the members' mean probability). Preprocessing is inside; the model runs in eval mode."""
    if fmt is None:
        fmt = FORMATS.get(os.path.splitext(out)[1].lower())
        if fmt is None:
            raise click.UsageError("pass --format onnx or --format pt2 (--out ends in neither .onnx nor .pt2)")
    from mnistfx.trained import export as exporting  # the module (torch), not loaded for --help

    if fmt == "onnx":
        exporting.require_onnx()  # before the weights are read
    w = load_trained(weights, model_spec)
    write = exporting.export_onnx if fmt == "onnx" else exporting.export_program
    path = write(w, out, overwrite=overwrite)
    size = path.stat().st_size
    if as_json:
        click.echo(
            mnistfx.to_json(
                {
                    "out": str(path),
                    "format": fmt,
                    "bytes": size,
                    "model": w.model.name,
                    "members": w.members,
                    "weights": str(weights),
                }
            )
        )
        return
    name = w.model.name if w.members is None else f"ensemble of {w.members} {w.model.name}"
    click.echo(printable(f"wrote {out} ({fmt}, {name}, {size / 1e6:.1f} MB)"))
