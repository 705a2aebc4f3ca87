"""Pictures of a run: its learning curves, its confusion matrix and the test digits it gets wrong; and of
its robustness: accuracy under corruptions and attacks, and what the corruptions look like.

matplotlib is the optional ``plot`` extra (``pip install 'mnistfx[plot]'``), imported only here
and only when a plot is drawn; without it the error says how to install it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from .._checks import check_whole, is_finite
from .._io import atomic_write_bytes
from .._types import StrPath
from ..constants import CORRUPTIONS
from ..data.corruptions import corrupt
from ..data.mnist import MNIST, load_mnist
from ..errors import MnistfxError
from ..models.evaluation import Metrics, evaluate_members, metrics_from_predictions, top_mistakes
from ..models.model import check_images
from ..runtime.device import resolve_device
from ..training.runs import WEIGHTS_FILE, existing_run_folder, load_history
from .robustness import Robustness
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
    """Train and validation loss, and validation accuracy, per epoch, as a PNG at ``path``.

    Arguments:
        history: a run's per-epoch history (:attr:`Run.history <mnistfx.Run>`, or
            :func:`~mnistfx.load_history`): dicts with ``epoch`` and ``train_loss``, and ``val_loss``
            and ``val_accuracy`` unless the run had no validation set.
        path: the PNG to write (atomically).

    Returns:
        ``path``.
    """
    if not isinstance(history, list) or not history or not all(isinstance(h, dict) for h in history):
        raise TypeError("history must be a non-empty list of per-epoch dicts (a run's history)")
    for i, h in enumerate(history, 1):
        if not all(is_finite(h.get(k)) for k in ("epoch", "train_loss")):
            raise ValueError(f"history entry {i} lacks a finite epoch or train_loss")
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    validated = all(is_finite(h.get("val_loss")) and is_finite(h.get("val_accuracy")) for h in history)
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(10, 4))
    loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (the loss trained on)")
    if validated:
        loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation (cross-entropy)")
        acc.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", color="C1")
    else:
        acc.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=acc.transAxes)
    loss.set(xlabel="epoch", ylabel="loss", title="loss per epoch")
    loss.legend(loc="upper right")
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    for ax in (loss, acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    return _save(fig, path)


def plot_confusion(metrics: Metrics, path: StrPath, *, data_name: str = "test set") -> Path:
    """The confusion matrix (rows: true digit, columns: predicted) with its counts, as a PNG.

    Arguments:
        metrics: :class:`~mnistfx.Metrics`, e.g. from :func:`~mnistfx.evaluate`.
        path: the PNG to write (atomically).
        data_name: what the images were, for the title (e.g. "validation set").

    Returns:
        ``path``.
    """
    if not isinstance(metrics, Metrics):
        raise TypeError(f"metrics must be a mnistfx.Metrics, not {type(metrics).__name__}")
    data_name = _check_data_name(data_name)
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
        title=f"{data_name}: {metrics.correct:,} / {metrics.n:,} right ({100 * metrics.accuracy:.2f} %)",
    )
    return _save(fig, path)


def plot_mistakes(
    images: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    path: StrPath,
    *,
    most: int = 48,
    data_name: str = "test set",
) -> Path:
    """The wrongly classified digits, most confident mistakes first (:func:`~mnistfx.top_mistakes`),
    each with its true label, the prediction and its probability, as a PNG grid.

    Arguments:
        images: the images, uint8 of 0-255 or float in [0, 1] (see :func:`~mnistfx.check_images`),
            (N, 28, 28), (N, 1, 28, 28) or (N, 784); drawn black (0) to white (255 or 1.0).
        labels: their true digits, an integer tensor (N,).
        probs: the class probabilities (N, 10), e.g. from :func:`~mnistfx.probabilities`.
        path: the PNG to write (atomically).
        most: how many mistakes to draw at most.
        data_name: what the images are, for the title (e.g. "validation set", "PGD examples").

    Returns:
        ``path``.
    """
    images = check_images(images, floats=True)
    check_whole("most", most, 1, error=ValueError)
    data_name = _check_data_name(data_name)
    if not isinstance(probs, torch.Tensor) or probs.shape[:1] != images.shape[:1]:
        raise ValueError(
            f"probs must be a tensor (N, 10) for the {images.shape[0]} images, not "
            f"{tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__}"
        )
    mistakes = top_mistakes(probs, labels, most)  # checks probs and labels
    plt = _pyplot()
    top = 255 if images.dtype == torch.uint8 else 1.0
    cols = 8
    rows = max(1, -(-len(mistakes.indices) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.55), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    m = mistakes
    tiles = zip(m.indices.tolist(), m.true.tolist(), m.predicted.tolist(), m.confidence.tolist(), strict=True)
    for ax, (i, true, predicted, confidence) in zip(axes.flat, tiles, strict=False):
        ax.imshow(images[i].reshape(28, 28).float().cpu().numpy(), cmap="gray", vmin=0, vmax=top)
        ax.set_title(f"{true}→{predicted} {100 * confidence:.0f}%", fontsize=8, color="C3")
    fig.suptitle(
        f"{mistakes.total} mistakes on the {data_name} ({len(images):,} images), most confident first "
        "(true→predicted, probability)",
        fontsize=9,
    )
    return _save(fig, path)


def figure_folder(out: StrPath) -> Path:
    """``out`` as a folder for pictures: made if it is new and its parent exists; a one-line
    :class:`~mnistfx.MnistfxError` if it cannot be."""
    out = Path(out)
    if not os.path.lexists(out) and out.parent.is_dir():
        try:
            out.mkdir()  # the folder named for the pictures (its parent must exist)
        except OSError as e:
            raise MnistfxError(f"cannot make the folder {out} ({e.strerror}): pass a folder you can write to") from None
    if not out.is_dir():
        raise MnistfxError(f"{out} is not a folder, nor a new one in a folder: pass a folder to `out`")
    return out


def _check_data_name(data_name) -> str:
    if not isinstance(data_name, str) or not data_name.strip() or len(data_name) > 80 or not data_name.isprintable():
        raise ValueError(f"data_name must be a short line of text (e.g. 'test set'), not {data_name!r:.60}")
    return data_name


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


def plot_members(
    member_accuracies: list[float], ensemble_accuracy: float, path: StrPath, *, data_name: str = "test set"
) -> Path:
    """A bar per ensemble member's accuracy, and the ensemble's beside them, as a PNG.

    Arguments:
        member_accuracies: each member's accuracy, in [0, 1].
        ensemble_accuracy: the ensemble's, in [0, 1].
        path: the PNG to write (atomically).
        data_name: what the accuracies were measured on, for the axis (e.g. "validation set").

    Returns:
        ``path``.
    """
    if not isinstance(member_accuracies, (list, tuple)) or not member_accuracies:
        raise TypeError("member_accuracies must be a non-empty list of accuracies in [0, 1]")
    for a in (*member_accuracies, ensemble_accuracy):
        if not (is_finite(a) and 0 <= a <= 1):
            raise ValueError(f"accuracies must be numbers in [0, 1], not {a!r:.40}")
    data_name = _check_data_name(data_name)
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
    ax.set_ylabel(f"{data_name} accuracy (%)")
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
        run_dir: the folder ``mnistfx train`` wrote, or any file in it (its ``weights.safetensors``,
            ``history.json`` or checkpoint).
        out: the folder to write the PNGs into (made if absent, in a folder that exists; default: the run
            folder).
        data: MNIST already loaded (default: :func:`~mnistfx.load_mnist`).
        device: where to evaluate.
        model: the model's name, for weights of a model of one's own (registered).

    Returns:
        The paths written.

    Raises:
        MnistfxError: no such run folder, matplotlib missing, or ``out`` not a folder.
        WeightsError: the run's weights are missing or unusable.
    """
    folder = existing_run_folder(run_dir)
    if data is not None and not isinstance(data, MNIST):
        raise TypeError(f"data must be a mnistfx.MNIST (from load_mnist) or None, not {type(data).__name__}")
    dev = resolve_device(device)
    _pyplot()  # before any work: say how to install it
    weights = load_model_weights(folder / WEIGHTS_FILE, model=model)
    history = load_history(folder)
    out = figure_folder(out if out is not None else folder)
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


def plot_robustness(result: Robustness, path: StrPath, *, title: str = "") -> Path:
    """A :func:`~mnistfx.robustness` result as a PNG: a bar per corruption (clean first, the mean over
    the corruptions as a line) and, beside it, accuracy under each attack against ε.

    Arguments:
        result: what :func:`~mnistfx.robustness` returned.
        path: the PNG to write (atomically).
        title: a line above both panels (e.g. the weights' name).

    Returns:
        ``path``.
    """
    if not isinstance(result, Robustness):
        raise TypeError(f"result must be a mnistfx.Robustness (from robustness()), not {type(result).__name__}")
    if title:
        title = _check_data_name(title)
    plt = _pyplot()
    panels = (1 if result.corruptions else 0) + (1 if result.attacks else 0)
    fig, axes = plt.subplots(
        1, max(panels, 1), figsize=(12 if panels == 2 else 8, 4.2), squeeze=False, width_ratios=[3, 1][:panels] or None
    )
    axes = list(axes.flat)
    if result.corruptions:
        ax = axes.pop(0)
        names = ["clean", *result.corruptions]
        values = [100 * result.clean, *(100 * v for v in result.corruptions.values())]
        bars = ax.bar(range(len(names)), values, color=["C2", *["C0"] * len(result.corruptions)])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        mean = 100 * (result.mean_corruption or 0)
        ax.axhline(mean, color="C3", lw=1, ls="--", label=f"mean over corruptions {mean:.1f}%")
        ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=45, ha="right", fontsize=8)
        ax.set(ylim=(0, 108), ylabel="accuracy (%)", title=f"MNIST-C corruptions ({result.images:,} test images)")
        ax.legend(loc="lower left", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if result.attacks:
        ax = axes.pop(0)
        for i, (attack, scores) in enumerate(result.attacks.items()):
            eps = [0.0, *map(float, scores)]
            ax.plot(
                eps, [100 * result.clean, *(100 * v for v in scores.values())], "o-", color=f"C{i + 4}", label=attack
            )
        steps = result.settings.get("pgd_steps")
        ax.set(
            xlabel="ε (L∞, pixel units)",
            ylabel="accuracy (%)",
            ylim=(-3, 103),
            title="attacks" + (f" (PGD: {steps} steps)" if steps and "pgd" in result.attacks else ""),
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_corruptions(images: torch.Tensor, path: StrPath, *, seed: int = 0) -> Path:
    """Digits under each of MNIST-C's corruptions (:func:`~mnistfx.corrupt`), as a PNG grid: one row
    per digit, the clean image first.

    Arguments:
        images: uint8 digits (N, 28, 28) of 0-255, N from 1 to 10 (or one digit, (28, 28)).
        path: the PNG to write (atomically).
        seed: the corruptions' seed.

    Returns:
        ``path``.
    """
    if isinstance(images, torch.Tensor) and images.dim() == 2:
        images = images[None]
    images = check_images(images).reshape(-1, 28, 28)
    if not 1 <= len(images) <= 10:
        raise ValueError(f"images must hold 1 to 10 digits (one row each), not {len(images)}")
    rows = [
        [images[i]] + [corrupt(images[i : i + 1], n, seed=seed, start=i)[0] for n in CORRUPTIONS]
        for i in range(len(images))
    ]
    plt = _pyplot()
    cols = 1 + len(CORRUPTIONS)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 0.95, len(rows) * 1.1 + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image.cpu().numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(("clean", *CORRUPTIONS)[c].replace("_", "\n"), fontsize=7)
    return _save(fig, path)
