"""Pictures of a run: its learning curves, its confusion matrix and the test digits it gets wrong.

matplotlib is the optional ``plot`` extra (``pip install 'mnistfx[plot]'``), imported only here
and only when a plot is drawn; without it the error says how to install it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from .._checks import is_finite
from .._io import atomic_write_bytes, read_limited
from .._types import StrPath
from ..constants import MAX_EPOCHS
from ..data.mnist import MNIST, load_mnist
from ..errors import MnistfxError
from ..models.evaluation import Metrics, evaluate_members, metrics_from_predictions
from ..runtime.device import resolve_device
from .weights import load_model_weights


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MnistfxError("plots need matplotlib: pip install 'mnistfx[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: list[dict], path: StrPath) -> Path:
    """Train and validation loss, and validation accuracy, per epoch, as a PNG at ``path``."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(10, 4))
    loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    loss.legend()
    acc.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", color="C1")
    acc.set(xlabel="epoch", ylabel="%", title="validation accuracy")
    for ax in (loss, acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    return _save(fig, path)


def plot_confusion(metrics: Metrics, path: StrPath) -> Path:
    """The confusion matrix (rows: true digit, columns: predicted) with its counts, as a PNG."""
    plt = _pyplot()
    counts = metrics.confusion.numpy()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    ax.imshow(counts, cmap="Blues", norm=plt.matplotlib.colors.LogNorm(vmin=1, vmax=max(int(counts.max()), 2)))
    for t in range(10):
        for p in range(10):
            if counts[t, p]:
                ax.text(
                    p, t, str(counts[t, p]), ha="center", va="center", fontsize=8, color="white" if t == p else "black"
                )
    ax.set(
        xticks=range(10),
        yticks=range(10),
        xlabel="predicted",
        ylabel="true",
        title=f"test set: {metrics.correct:,} / {metrics.n:,} right ({100 * metrics.accuracy:.2f} %)",
    )
    return _save(fig, path)


def plot_mistakes(
    images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, path: StrPath, *, most: int = 48
) -> Path:
    """The wrongly classified digits, most confident mistakes first, each with its true label,
    the prediction and its probability, as a PNG grid."""
    plt = _pyplot()
    conf, pred = probs.max(1)
    wrong = torch.nonzero(pred != labels).flatten()
    wrong = wrong[conf[wrong].argsort(descending=True)][:most]
    cols = 8
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.55), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong.tolist(), strict=False):
        ax.imshow(images[i].numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{int(labels[i])}→{int(pred[i])} {100 * float(conf[i]):.0f}%", fontsize=8, color="C3")
    fig.suptitle(
        f"{len(torch.nonzero(pred != labels))} mistakes on the test set, most confident first "
        "(true→predicted, probability)",
        fontsize=9,
    )
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    try:
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=110, format="png")
        atomic_write_bytes(path, buffer.getvalue())  # whole or not at all
    except OSError as e:
        raise MnistfxError(f"cannot write {path} ({e.strerror}): pass a writable `out`") from None
    finally:
        _pyplot().close(fig)
    return path


def plot_members(member_accuracies: list[float], ensemble_accuracy: float, path: StrPath) -> Path:
    """A bar per ensemble member's test accuracy, and the ensemble's beside them, as a PNG."""
    plt = _pyplot()
    k = len(member_accuracies)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.7 * k + 3.0), 4.0))
    values = [100 * a for a in member_accuracies] + [100 * ensemble_accuracy]
    bars = ax.bar(range(k + 1), values, color=["tab:blue"] * k + ["tab:orange"])
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(k + 1), [str(i + 1) for i in range(k)] + ["ensemble"])
    low, high = min(values), max(values)
    span = max(high - low, 0.1)
    bottom = max(0.0, low - span)  # the differences are what matters: start the axis near them
    ax.set_ylim(bottom, high + 0.15 * (high - bottom))  # room for the labels above the bars
    ax.set_xlabel("member")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"{k} members alone: mean {sum(values[:-1]) / k:.2f} %\ntheir ensemble (mean of probabilities): "
        f"{values[-1]:.2f} %",
        fontsize=10,
    )
    return _save(fig, path)


def plot_run(
    run_dir: StrPath,
    *,
    out: StrPath | None = None,
    data: MNIST | None = None,
    device: str = "cpu",
    model: str | None = None,
) -> list[Path]:
    """Draw a run folder's pictures: ``history.png`` (learning curves), ``confusion.png`` and
    ``mistakes.png`` (its test-set mistakes), and for an ensemble ``members.png`` (each member
    beside the ensemble), from its ``weights.safetensors`` and ``history.json``.

    Arguments:
        run_dir: the folder ``mnistfx train`` wrote.
        out: where to write the PNGs (default: the run folder).
        data: MNIST already loaded (default: :func:`~mnistfx.load_mnist`).
        device: where to evaluate.
        model: the model's name, for weights of a model of one's own (registered).

    Returns:
        The paths written.
    """
    run_dir = Path(run_dir)
    _pyplot()  # before any work: say how to install it
    weights = load_model_weights(run_dir / "weights.safetensors", model=model)
    history = _read_history(run_dir / "history.json")
    out = Path(out) if out is not None else run_dir
    if not out.is_dir():
        raise MnistfxError(f"{out} is not a folder: pass an existing folder to `out`")
    dev = resolve_device(device)
    data = data or load_mnist()
    weights = weights.to(dev)
    probs = weights.probabilities(data.test_images).cpu()
    metrics = metrics_from_predictions(probs.argmax(1), data.test_labels)
    paths = [
        plot_history(history, out / "history.png"),
        plot_confusion(metrics, out / "confusion.png"),
        plot_mistakes(data.test_images, data.test_labels, probs, out / "mistakes.png"),
    ]
    if weights.members is not None:
        members = evaluate_members(
            weights.model,
            weights.params,
            data.test_images,
            data.test_labels,
            members=weights.members,
            state=weights.state,
        )
        paths.append(plot_members([m.accuracy for m in members], metrics.accuracy, out / "members.png"))
    return paths


_HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy")
_MAX_LOSS = 1e6  # cross-entropy far past any run's first epoch; larger numbers are no history to draw


def _drawable(entry) -> bool:
    """One epoch of a history, with numbers a plot can hold (matplotlib fails on finite extremes)."""
    return (
        isinstance(entry, dict)
        and all(is_finite(entry.get(k)) for k in _HISTORY_KEYS)
        and float(entry["epoch"]).is_integer()
        and 1 <= entry["epoch"] <= MAX_EPOCHS
        and 0 <= entry["val_accuracy"] <= 1
        and all(0 <= entry[k] <= _MAX_LOSS for k in ("train_loss", "val_loss"))
    )


def _read_history(path: Path) -> list[dict]:
    """The per-epoch history from a run's ``history.json``, every entry checked."""
    fix = "pass the folder of a run that `mnistfx train` wrote"
    raw = read_limited(path, 16 << 20, what="history", fix=fix, error=MnistfxError)
    try:
        history = json.loads(raw).get("history")
    except (ValueError, RecursionError, AttributeError):
        history = None
    if not isinstance(history, list) or not 0 < len(history) <= MAX_EPOCHS or not all(map(_drawable, history)):
        raise MnistfxError(
            f"{path} holds no per-epoch history mnistfx can draw (epochs 1-{MAX_EPOCHS:,}, losses "
            f"0-{_MAX_LOSS:g}, accuracies 0-1): {fix}"
        )
    return history
