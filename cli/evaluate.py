"""``mnistfx eval`` and ``mnistfx predict``: trained weights on the test set, or on image files."""

import click

import mnistfx

from .options import console, data_root_option, device_option, json_option, load_trained, model_option, printable


@click.command(name="eval")
@click.argument("weights", type=click.Path())
@model_option
@device_option
@data_root_option
@json_option("Print the metrics as JSON.")
def eval_(weights, model_spec, device, data_root, as_json):
    """Evaluate WEIGHTS (safetensors, or the notebook's .pth) on the 10,000 test images; an
    ensemble's members are also scored alone."""
    dev = mnistfx.resolve_device(device)
    w = load_trained(weights, model_spec).to(dev)
    ds = mnistfx.load_mnist(data_root)
    m = w.evaluate(ds.test_images, ds.test_labels)
    members = (
        []
        if w.members is None
        else mnistfx.evaluate_members(
            w.model, w.params, ds.test_images, ds.test_labels, members=w.members, state=w.state
        )
    )
    name = w.model.name if w.members is None else f"ensemble of {w.members} {w.model.name}"
    if as_json:
        click.echo(
            mnistfx.to_json(
                {
                    "model": w.model.name,
                    "members": w.members,
                    "weights": str(weights),
                    **m.to_dict(),
                    "member_accuracy": [x.accuracy for x in members] or None,
                }
            )
        )
        return
    from rich.table import Table
    from rich.text import Text

    out = console()
    out.print(
        Text.assemble(
            f"{name} from {printable(weights)}: test accuracy ",
            (f"{100 * m.accuracy:.2f}%", "bold"),
            f" ({m.correct}/{m.n}), loss {m.loss:.4f}",
        )
    )
    if members:
        out.print("members alone: " + " ".join(f"{100 * x.accuracy:.2f}%" for x in members))
    per_class = Table("digit", "precision", "recall", "F1", "support", title="per class")
    support = m.confusion.sum(1)
    for d in range(10):
        per_class.add_row(str(d), f"{m.precision[d]:.4f}", f"{m.recall[d]:.4f}", f"{m.f1[d]:.4f}", str(int(support[d])))
    out.print(per_class)
    confusion = Table("true \\ pred", *map(str, range(10)), title="confusion matrix")
    for d in range(10):
        confusion.add_row(
            str(d),
            *(
                Text(str(v), style="bold") if i == d else (str(v) if v else "·")
                for i, v in enumerate(m.confusion[d].tolist())
            ),
        )
    out.print(confusion)


@click.command()
@click.argument("weights", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option(
    "--invert/--no-invert",
    default=None,
    help="The digits are dark on light (--invert) or light on dark (--no-invert); default: decided "
    "from each image's border.",
)
@click.option("--show", is_flag=True, help="Also print the 28×28 image the model sees.")
@model_option
@json_option("Print predictions as JSON, with all ten probabilities.")
def predict(weights, images, invert, show, model_spec, as_json):
    """Predict the digit in each IMAGE (PNG, JPEG, ...), prepared as MNIST's digits were:
    grayscale, light on dark, cropped to the ink, fit in 20×20, centred by mass in 28×28."""
    w = load_trained(weights, model_spec)
    batch = mnistfx.read_digit_images(images, invert=invert)
    probs = w.checked_probabilities(batch)
    conf, pred = probs.max(1)
    rows = [
        {
            "image": path,
            "digit": int(p),
            "confidence": round(float(c), 4),
            "probabilities": [round(float(v), 6) for v in row],
        }
        for path, p, c, row in zip(images, pred, conf, probs, strict=True)
    ]
    if as_json:
        click.echo(mnistfx.to_json(rows))
        return
    for r, seen in zip(rows, batch, strict=True):
        click.echo(f"{printable(r['image'])}: {r['digit']} ({100 * r['confidence']:.1f}%)")
        if show:
            click.echo(_ascii(seen))


_SHADES = " .:-=+*#%@"


def _ascii(image) -> str:
    """A 28×28 uint8 image as 28 lines of characters, darker characters for more ink."""
    return "\n".join("".join(_SHADES[v * len(_SHADES) // 256] * 2 for v in row) for row in image.tolist())
