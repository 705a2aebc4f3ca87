"""Regenerate every figure the documentation shows, with mnistfx's own commands.

Run from the repository root::

    .venv/bin/python docs/make_figures.py                       # into docs/images
    .venv/bin/python docs/make_figures.py --out /tmp/figs --work /tmp/figwork

What it does, in order (each step prints what it wrote and how long it took):

1. ``mnistfx train tuned --recipe fast --seed 0`` (12 epochs), then ``mnistfx plot`` on that run:
   ``history.png`` (learning curves), ``confusion.png`` (the 10,000 test images) and ``mistakes.png``
   (the most confident mistakes).
2. ``mnistfx train tuned --recipe fast --ensemble 3 --epochs 3 --seed 0`` (a short run, 3 epochs), then
   ``mnistfx plot`` on it: ``members.png`` (each member's test accuracy beside the ensemble's).
3. ``mnistfx serve`` with step 1's weights, the page opened in headless Chromium (selenium), a 2 drawn
   on its canvas by synthetic pointer strokes, and the page captured once it answers: ``serve.png``.
4. A synthetic photo of a handwritten number, ``number.jpg``: real MNIST test digits (no photo of real
   handwriting ships with the repository), scaled up about 4×, each slightly rotated, in ballpoint-blue
   ink on off-white paper lit unevenly (a gradient and a smooth random shading), with paper grain, a few
   specks of dust, a slight rotation of the whole sheet, a little blur and sensor noise, saved as JPEG.
   ``mnistfx read --json`` reads it with step 1's weights; ``read.png`` draws the boxes and digits it
   reported, and below them the 28×28 images the model saw (``mnistfx.find_digits``). The figure is made
   only when the reading is right.
5. ``mnistfx robustness`` on step 1's weights (all 10,000 test images, the 15 corruptions, FGSM and
   PGD-40 at ε 0.1, 0.2, 0.3; a few minutes) with ``--plot``: ``robustness.png`` and ``corruptions.png``.

Everything is seeded, so a rerun draws the same figures (training is bit for bit reproducible on the
CPU), except the server's time in ``serve.png`` ("answered in ... ms"). Files are written only into
``--out`` and the work folder (default: a temporary folder, removed at the end, also on Ctrl-C or
SIGTERM; a ``--work`` folder is kept, and runs already finished in it are reused). mnistfx itself keeps
torch.compile's kernels in its usual cache (``~/.cache/mnistfx/inductor``) and matplotlib its font cache.
Needs matplotlib, selenium, Chromium and chromedriver (Debian: ``apt install chromium chromium-driver``);
without one of them it stops at once with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
ENSEMBLE = 3
ENSEMBLE_EPOCHS = 3
NUMBER = "2024"  # the number in the synthetic photo
DRAWN = 2  # the digit drawn on the page
MAX_BYTES = 200_000  # a figure larger than this is re-encoded with fewer colours


class FigureError(Exception):
    """A step failed; its message is the one line printed."""


# ---------------------------------------------------------------------------------------------- tools


def mnistfx_command() -> list[str]:
    """The ``mnistfx`` command of this Python (its console script, else ``python -m mnistfx``)."""
    script = Path(sys.executable).with_name("mnistfx")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mnistfx"]


def find_browser() -> tuple[str, str]:
    """Chromium's and chromedriver's paths; a one-line error when either (or selenium) is missing."""
    browser = next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        raise FigureError(f"{missing} not found: install them (Debian: apt install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise FigureError("selenium is missing: pip install selenium") from None
    return browser, driver


def check_requirements() -> tuple[str, str]:
    """Fail early, in one line, when matplotlib, selenium, Chromium or chromedriver is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise FigureError("matplotlib is missing: pip install 'mnistfx[plot]' (or pip install matplotlib)") from None
    return find_browser()


def run(args: list[str], what: str) -> str:
    """Run a command, return its stdout; a failure raises with the last line it printed on stderr."""
    print("  $", " ".join(a if re.fullmatch(r"[\w./:=,+-]+", a) else repr(a) for a in args), flush=True)
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise FigureError(f"{what} failed (exit {done.returncode}): {last}")
    return done.stdout


def publish(source: Path, out: Path, name: str) -> Path:
    """Copy a PNG into ``out`` as ``name``; re-encode it with a 256-colour palette if it is too large."""
    from PIL import Image

    target = out / name
    data = source.read_bytes()
    if len(data) > MAX_BYTES:
        with Image.open(source) as image:
            image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    else:
        target.write_bytes(data)
    return target


def describe(path: Path) -> str:
    """``name (W×H px, N kB)``."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    return f"{path.name} ({width}×{height} px, {path.stat().st_size / 1000:.0f} kB)"


@contextmanager
def step(title: str) -> Iterator[list[Path]]:
    """Time a figure's step and print what it wrote."""
    print(f"\n== {title}", flush=True)
    start = time.perf_counter()
    made: list[Path] = []
    yield made
    seconds = time.perf_counter() - start
    for path in made:
        print(f"  wrote {path.parent}/{describe(path)}")
    print(f"  took {seconds:.0f} s", flush=True)


# ---------------------------------------------------------------------------------------------- runs


def train(work: Path, name: str, extra: list[str]) -> dict[str, Any]:
    """``mnistfx train tuned --recipe fast --seed 0 EXTRA --out WORK/NAME``; its JSON summary.

    A run already finished in the work folder (its summary saved beside it) is reused.
    """
    folder, summary = work / name, work / f"{name}.json"
    if summary.exists() and (folder / "weights.safetensors").exists():
        print(f"  reusing the finished run in {folder}")
        return json.loads(summary.read_text())
    args = ["train", "tuned", "--recipe", "fast", "--seed", str(SEED), *extra, "--out", str(folder)]
    out = run([*mnistfx_command(), *args, "--overwrite", "--json"], f"mnistfx train ({name})")
    result = json.loads(out)
    summary.write_text(json.dumps(result, indent=1))
    return result


def plot(work: Path, name: str) -> Path:
    """``mnistfx plot WORK/NAME --out WORK/NAME-plots``: the folder of its PNGs."""
    folder = work / f"{name}-plots"
    folder.mkdir(exist_ok=True)
    run([*mnistfx_command(), "plot", str(work / name), "--out", str(folder)], f"mnistfx plot ({name})")
    return folder


def brief(summary: dict[str, Any]) -> dict[str, Any]:
    """The facts of a run's JSON summary that a caption may state."""
    keys = ("model", "seed", "epochs", "members", "val_accuracy", "test_accuracy", "member_test_accuracy", "seconds")
    facts = {k: summary.get(k) for k in keys}
    facts["recipe"] = summary.get("config", {}).get("recipe")
    facts["test_correct"] = summary.get("test", {}).get("correct")
    facts["test_mistakes"] = summary.get("test", {}).get("n", 0) - (facts["test_correct"] or 0)
    return facts


# ---------------------------------------------------------------------------------------------- the page


@contextmanager
def serving(weights: Path) -> Iterator[str]:
    """``mnistfx serve WEIGHTS --port 0`` in its own process; yields the page's URL."""
    args = [*mnistfx_command(), "serve", str(weights), "--port", "0"]
    print("  $", " ".join(args), flush=True)
    server = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = server.stdout.readline() if server.stdout else ""
        url = re.search(r"at (http://\S+)", line)
        if url is None:
            error = server.stderr.read().strip().splitlines()[-1:] if server.stderr else []
            raise FigureError(f"mnistfx serve did not start: {(error or [line.strip() or 'no output'])[0]}")
        print(f"  {line.strip()}")
        yield url.group(1)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def two(t: float) -> tuple[float, float]:
    """A handwritten 2 on the 280×280 pad, at ``t`` in [0, 1] along its single stroke."""
    if t < 0.45:  # the hook: from the left, over the top, down the right side
        a = np.pi * (1.12 - 1.55 * t / 0.45)
        return 140 + 52 * np.cos(a), 110 - 48 * np.sin(a)
    end_x, end_y = 140 + 52 * np.cos(np.pi * (1.12 - 1.55)), 110 - 48 * np.sin(np.pi * (1.12 - 1.55))
    if t < 0.8:  # the diagonal down to the bottom left
        s = (t - 0.45) / 0.35
        return end_x + s * (82 - end_x), end_y + s * (222 - end_y) - 10 * np.sin(np.pi * s)
    s = (t - 0.8) / 0.2  # the base
    return 82 + s * 126, 222 + 4 * s


def stroke_points(path: Callable[[float], tuple[float, float]], n: int = 60) -> list[tuple[int, int]]:
    """``n`` points along ``path``, rounded to pixels."""
    return [(round(x), round(y)) for x, y in (path(i / (n - 1)) for i in range(n))]


def screenshot_page(weights: Path, work: Path, target: Path, browser: str, driver_path: str) -> dict[str, Any]:
    """Serve ``weights``, draw a 2 on the page in headless Chromium, and capture the page once it answers."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1.5",
        "--window-size=780,900",
        "--force-prefers-color-scheme=light",
        f"--user-data-dir={work / 'chromium-profile'}",
        f"--disk-cache-dir={work / 'chromium-cache'}",
    ):
        options.add_argument(flag)
    with serving(weights) as url:
        driver = webdriver.Chrome(options=options, service=Service(driver_path, log_output=subprocess.DEVNULL))
        try:
            driver.get(url)
            wait = WebDriverWait(driver, 30, poll_frequency=0.1)
            wait.until(lambda d: "answers" in d.find_element(By.ID, "model").text)
            pad = driver.find_element(By.ID, "pad")
            size = pad.size
            scale = size["width"] / 280  # the pad's CSS size against its 280×280 pixels
            points = stroke_points(two)
            actions = ActionBuilder(driver, mouse=PointerInput("mouse", "mouse"), duration=15)
            mouse = actions.pointer_action
            for i, (x, y) in enumerate(points):  # offsets from the pad's centre
                mouse.move_to(pad, round((x - 140) * scale), round((y - 140) * scale))
                if i == 0:
                    mouse.pointer_down()
            mouse.pointer_up()
            actions.perform()
            ActionChains(driver).move_by_offset(0, 0).perform()
            wait.until(
                lambda d: (
                    d.find_element(By.ID, "label").text.strip() not in ("", "–")
                    and d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
                    and d.find_element(By.ID, "ms").text
                )
            )
            time.sleep(0.5)  # the bars' width transition (0.12 s)
            label = int(driver.find_element(By.ID, "label").text)
            confidence = driver.find_element(By.ID, "confidence").text
            answered = driver.find_element(By.ID, "ms").text
            main = driver.find_element(By.TAG_NAME, "main")
            shot = work / "serve-page.png"
            shot.write_bytes(main.screenshot_as_png)
        finally:
            driver.quit()
    if label != DRAWN:
        raise FigureError(f"the page read the drawn {DRAWN} as {label}: the screenshot would show a mistake")
    publish(shot, target.parent, target.name)
    return {"label": label, "confidence": confidence, "answered": answered}


# ---------------------------------------------------------------------------------------------- the photo


def smooth_field(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int]) -> np.ndarray:
    """Smooth random values in about [-1, 1]: a coarse random grid resized with bicubic interpolation."""
    from PIL import Image

    coarse = rng.uniform(-1, 1, size=cells).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC), np.float32)


def make_photo(images: Any, labels: Any, number: str, seed: int) -> tuple[np.ndarray, list[int]]:
    """A synthetic photo (RGB uint8) of ``number`` written with MNIST test digits; and their indices."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    indices = [int(rng.choice(np.flatnonzero(labels == int(c)))) for c in number]
    pieces = []
    for i in indices:
        digit = Image.fromarray(images[i])
        digit = digit.rotate(float(rng.uniform(-6, 6)), resample=Image.BICUBIC, expand=True)
        box = digit.getbbox()
        assert box is not None
        digit = digit.crop(box)
        scale = rng.uniform(4.2, 4.9)
        size = (round(digit.width * scale), round(digit.height * scale))
        pieces.append(np.asarray(digit.resize(size, Image.LANCZOS), np.float32).clip(0, 255) / 255)
    tallest = max(p.shape[0] for p in pieces)
    gaps = [round(tallest * rng.uniform(0.25, 0.45)) for _ in pieces[:-1]] + [0]
    margin_x, margin_y = 80, 60
    width = sum(p.shape[1] for p in pieces) + sum(gaps) + 2 * margin_x
    height = tallest + 2 * margin_y
    pad = 40  # a border, so that rotating the sheet leaves no corners to fill
    big_h, big_w = height + 2 * pad, width + 2 * pad
    ink = np.zeros((big_h, big_w), np.float32)
    x = pad + margin_x
    for piece, gap in zip(pieces, gaps, strict=True):
        h, w = piece.shape
        y = pad + margin_y + tallest - h + round(rng.uniform(-0.06, 0.06) * tallest)  # on a wavy baseline
        ink[y : y + h, x : x + w] = np.maximum(ink[y : y + h, x : x + w], piece)
        x += w + gap
    written = ink > 0.05
    for _ in range(6):  # specks of dust, too small to be taken for digits, off the digits
        sy, sx = int(rng.integers(pad, big_h - pad)), int(rng.integers(pad, big_w - pad))
        if written[max(0, sy - 25) : sy + 25, max(0, sx - 25) : sx + 25].any():
            continue
        r = int(rng.integers(1, 3))
        ink[sy - r : sy + r, sx - r : sx + r] = np.maximum(ink[sy - r : sy + r, sx - r : sx + r], 0.7)
    pressure = 0.85 + 0.12 * smooth_field(rng, big_h, big_w, (6, 14))  # the pen's ink varies along strokes
    ink = np.clip(ink, 0, 1) ** 0.8 * np.clip(pressure, 0, 1)
    yy, xx = np.mgrid[0:big_h, 0:big_w].astype(np.float32)
    light = 1.0 - 0.10 * (xx / big_w) - 0.06 * (yy / big_h)  # brighter towards the top left
    light += 0.035 * smooth_field(rng, big_h, big_w, (4, 6))  # uneven shading of the sheet
    grain = smooth_field(rng, big_h, big_w, (big_h // 3, big_w // 3))  # the paper's fibre
    paper = np.array([244, 240, 229], np.float32)  # off-white
    pen = np.array([28, 38, 92], np.float32)  # ballpoint blue
    rgb = paper * (light + 0.012 * grain)[..., None]
    rgb = rgb * (1 - ink[..., None]) + pen * ink[..., None] * light[..., None]
    sheet = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    sheet = sheet.rotate(float(rng.uniform(-2, 2)), resample=Image.BICUBIC)  # held not quite straight
    sheet = sheet.crop((pad, pad, pad + width, pad + height)).filter(ImageFilter.GaussianBlur(0.9))
    noisy = np.asarray(sheet, np.float32) + rng.normal(0, 2.5, size=(height, width, 3))  # sensor noise
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), indices


def draw_reading(photo: Path, reading: dict[str, Any], seen: list[np.ndarray], target: Path) -> None:
    """The photo with the boxes and digits ``mnistfx read`` reported, and the 28×28 digits the model saw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    with Image.open(photo) as image:
        picture = np.asarray(image.convert("RGB"))
    height, width = picture.shape[:2]
    accent, muted = "#d9480f", "#475467"
    # the layout, in inches from the top: a title, the photo, the 28×28 digits, a caption
    fig_w, title_h, gap, digit, caption_h = 7.6, 0.5, 0.2, 0.9, 0.45
    photo_h = fig_w * height / width
    fig_h = title_h + photo_h + gap + digit + caption_h
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=110)

    def axes(left: float, top: float, w: float, h: float) -> Any:  # in inches from the top left
        return fig.add_axes((left / fig_w, 1 - (top + h) / fig_h, w / fig_w, h / fig_h))

    fig.text(
        0.5,
        1 - title_h / 2 / fig_h,
        f"mnistfx read  →  {reading['text']}",
        ha="center",
        va="center",
        fontsize=14,
        fontweight="bold",
        color="#1d2430",
    )
    top = axes(0, title_h, fig_w, photo_h)
    top.imshow(picture)
    top.set_axis_off()
    for d in reading["digits"]:
        box = d["box"]
        top.add_patch(
            Rectangle((box["x"] - 0.5, box["y"] - 0.5), box["width"], box["height"], fill=False, lw=2, ec=accent)
        )
        top.text(
            box["x"] + box["width"] / 2,
            box["y"] - 6,
            f"{d['digit']}: {100 * d['probability']:.1f}%",
            ha="center",
            va="bottom",
            fontsize=11,
            fontweight="bold",
            color=accent,
        )
    n, space = len(seen), 0.3
    left = (fig_w - n * digit - (n - 1) * space) / 2
    for i, image28 in enumerate(seen):
        ax = axes(left + i * (digit + space), title_h + photo_h + gap, digit, digit)
        ax.imshow(image28, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.text(
        0.5,
        (caption_h / 2) / fig_h,
        "each digit as the model sees it: 28×28, light on black, centred as MNIST's digits were",
        ha="center",
        va="center",
        fontsize=9.5,
        color=muted,
    )
    fig.savefig(target, dpi=110, facecolor="white")
    plt.close(fig)


def read_figure(weights: Path, work: Path, out: Path) -> dict[str, Any]:
    """Make the synthetic photo, read it with ``mnistfx read --json``, draw ``read.png``."""
    from PIL import Image

    import mnistfx

    data = mnistfx.load_mnist()
    images, labels = data.test_images.numpy(), data.test_labels.numpy()
    for attempt in range(20):  # the first photo (in seed order) read right
        picture, indices = make_photo(images, labels, NUMBER, SEED + attempt)
        photo = work / f"number-{attempt}.jpg"
        Image.fromarray(picture).save(photo, quality=88)
        reading = json.loads(run([*mnistfx_command(), "read", str(weights), str(photo), "--json"], "mnistfx read"))
        print(f"  read {reading['text']!r} (written: {NUMBER}; MNIST test images {indices})")
        if reading["text"] == NUMBER:
            break
    else:
        raise FigureError(f"mnistfx read never read {NUMBER} right in 20 synthetic photos")
    seen = [f.image.numpy() for f in mnistfx.find_digits(photo)]
    shutil.copyfile(photo, out / "number.jpg")
    draw_reading(photo, reading, seen, work / "read.png")
    publish(work / "read.png", out, "read.png")
    digits = [{k: d[k] for k in ("digit", "probability", "box")} for d in reading["digits"]]
    return {"photo_seed": SEED + attempt, "mnist_test_indices": indices, "text": reading["text"], "digits": digits}


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="folder for the figures")
    parser.add_argument("--work", type=Path, help="work folder, kept (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the work folder, as on Ctrl-C
    began = time.perf_counter()
    try:
        browser, driver = check_requirements()
        args.out.mkdir(parents=True, exist_ok=True)
        if args.work is not None:
            args.work.mkdir(parents=True, exist_ok=True)
            facts = make_all(args.out.resolve(), args.work.resolve(), browser, driver)
        else:
            with tempfile.TemporaryDirectory(prefix="mnistfx-figures-") as work:
                facts = make_all(args.out.resolve(), Path(work), browser, driver)
    except FigureError as e:
        print(f"make_figures: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("make_figures: interrupted", file=sys.stderr)
        return 130
    print(f"\nfacts for captions: {json.dumps(facts, indent=1)}")
    print(f"all figures in {time.perf_counter() - began:.0f} s")
    return 0


def make_all(out: Path, work: Path, browser: str, driver: str) -> dict[str, Any]:
    """Every figure, into ``out``; returns the facts they show, for captions."""
    facts: dict[str, Any] = {}
    with step("tuned, fast recipe: history.png, confusion.png, mistakes.png") as made:
        summary = train(work, "tuned", [])
        plots = plot(work, "tuned")
        for name in ("history.png", "confusion.png", "mistakes.png"):
            made.append(publish(plots / name, out, name))
        facts["tuned"] = brief(summary)
    with step(f"an ensemble of {ENSEMBLE}, {ENSEMBLE_EPOCHS} epochs: members.png") as made:
        summary = train(work, f"ens{ENSEMBLE}", ["--ensemble", str(ENSEMBLE), "--epochs", str(ENSEMBLE_EPOCHS)])
        made.append(publish(plot(work, f"ens{ENSEMBLE}") / "members.png", out, "members.png"))
        facts["ensemble"] = brief(summary)
    with step(f"the drawing page with a {DRAWN} drawn: serve.png") as made:
        weights = work / "tuned" / "weights.safetensors"
        facts["serve"] = screenshot_page(weights, work, out / "serve.png", browser, driver)
        made.append(out / "serve.png")
    with step(f"a synthetic photo of {NUMBER}, read: number.jpg, read.png") as made:
        facts["read"] = read_figure(work / "tuned" / "weights.safetensors", work, out)
        made += [out / "number.jpg", out / "read.png"]
    with step("tuned under corruptions and attacks: robustness.png, corruptions.png") as made:
        weights = work / "tuned" / "weights.safetensors"
        pictures = work / "robustness"
        report = run(
            [*mnistfx_command(), "robustness", str(weights), "--plot", str(pictures), "--json"], "mnistfx robustness"
        )
        facts["robustness"] = {k: v for k, v in json.loads(report).items() if k != "settings"}
        for name in ("robustness.png", "corruptions.png"):
            made.append(publish(pictures / name, out, name))
    return facts


if __name__ == "__main__":
    sys.exit(main())
