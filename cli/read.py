"""``mnistfx read``: the handwritten number in a photo or scan, digit by digit."""

import click

import mnistfx

from .options import json_option, load_trained, model_option


@click.command()
@click.argument("weights", type=click.Path())
@click.argument("image", type=click.Path())
@click.option(
    "--invert/--no-invert",
    default=None,
    help="The digits are dark on light (--invert) or light on dark (--no-invert); default: whichever "
    "stands out more from the paper.",
)
@model_option
@json_option("Print the number as JSON: each digit with all ten probabilities and its box.")
def read(weights, image, invert, model_spec, as_json):
    """Read the handwritten number in IMAGE (PNG, JPEG, ...): its digits found left to right (they
    must not touch), each prepared as `predict` prepares a digit, and classified with WEIGHTS."""
    w = load_trained(weights, model_spec)
    reading = mnistfx.read_number(w, image, invert=invert)
    if as_json:
        click.echo(mnistfx.to_json({"image": image, **reading.to_dict()}))
        return
    each = ", ".join(f"{d.digit}: {100 * d.probability:.1f}%" for d in reading.digits)
    click.echo(f"{reading.text}  ({each})")
