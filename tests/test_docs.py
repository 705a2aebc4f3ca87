"""Every code block of the README and of the pages in docs/ runs as written, in order, or says why not.

A page's blocks run in a folder of its own: Python blocks in one namespace, shell blocks as bash scripts
(stopping at the first failing command) with `mnistfx` on the PATH. The folder holds what the pages name:
``runs/tuned-seed0`` (a trained run), ``digit.png``, ``number.png`` and the notebook's checkpoint. A block
that must not run here (it trains for minutes, serves until stopped, installs packages) has the HTML
comment ``<!-- not run: REASON -->`` on the line just above it, and the reason says what runs instead.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from composed import compose
from PIL import Image

import mnistfx

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not run: (\S.*\S) -->\s*\Z")
SHELL_TIMEOUT = 300


def code_blocks(text: str) -> list[tuple[str, str, str | None, int]]:
    """Each fenced block of a Markdown text: (language, body, the reason it is not run or None, line)."""
    blocks = []
    for match in FENCE.finditer(text):
        language = match.group(1).strip()
        if language.startswith("{"):  # a MyST directive (an image, a toctree, an include), not code
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.search(before)
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((language, match.group(2), reason and reason.group(1), line))
    return blocks


def test_code_blocks_are_found():
    """The parser sees the blocks and the marks (a parser that saw none would pass every page)."""
    text = "<!-- not run: it serves until stopped -->\n```bash\nmnistfx serve w\n```\n\n```python\nx = 1\n```\n"
    assert code_blocks(text) == [
        ("bash", "mnistfx serve w\n", "it serves until stopped", 2),
        ("python", "x = 1\n", None, 6),
    ]
    assert sum(len(code_blocks(p.read_text())) for p in PAGES) >= 30


@pytest.fixture(scope="module")
def page_files(trained_tuned, mnist, tmp_path_factory):
    """The files the pages' commands name, made once: a trained run, a digit, a number, a notebook .pth."""
    folder = tmp_path_factory.mktemp("page-files")
    shutil.copytree(trained_tuned.parent, folder / "runs" / "tuned-seed0")
    digit = 255 - mnist.test_images[0].numpy()  # a 7, dark on light, as a photo of one digit would be
    Image.fromarray(digit).resize((112, 112), Image.Resampling.BILINEAR).save(folder / "digit.png")
    firsts = [int((mnist.test_labels == d).nonzero()[k]) for d, k in ((2, 0), (0, 0), (2, 1), (4, 0))]
    number = compose(np.random.default_rng(0), mnist.test_images, mnist.test_labels, 4, indices=firsts)  # 2024
    Image.fromarray(number.image).save(folder / "number.png")
    notebook = ROOT.parent / "shared" / "notebook" / "handwritten_digit_classfier_tuned.pth"
    pth = folder / notebook.name
    if notebook.is_file():
        shutil.copyfile(notebook, pth)
    else:  # a checkpoint in the notebook's own format, where the published one is not beside the repository
        weights = mnistfx.load_model_weights(trained_tuned)
        mnistfx.export_notebook_checkpoint(pth, weights.model, weights.params)
    return folder


def run_shell(body: str, cwd: Path, where: str) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env["MNISTFX_DATA"] = str(mnistfx.default_root())
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", body],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT,
    )
    assert done.returncode == 0, (
        f"{where} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )


def check_readme(ns: dict) -> None:
    assert ns["run"].test.accuracy > 0.5 and ns["mine"].val.accuracy > 0.5


def check_ensembles(ns: dict) -> None:
    """The per-sample gradients are the gradients of each image alone; the ensemble has its members."""
    params, x, y, noise, loss = (ns[k] for k in ("params", "x", "y", "noise", "one_image_loss"))
    for i in (0, 7, 15):
        alone = torch.func.grad(loss)(params, x[i], y[i], {k: v[i] for k, v in noise.items()})
        for k in params:
            torch.testing.assert_close(ns["per_sample"][k][i], alone[k], rtol=1e-4, atol=1e-6)
    assert ns["run"].config.ensemble == 3 and len(ns["run"].member_test) == 3
    assert ns["losses"].shape == (4,) and ns["probs"].shape == (5, 10)


def check_models(ns: dict) -> None:
    """The plain nn.Module predicts what the weights predict."""
    weights, images = ns["weights"], ns["data"].test_images[:64]
    with torch.no_grad():
        seen = ns["net"](weights.model.preprocess(images))
    torch.testing.assert_close(seen.softmax(1), weights.probabilities(images))


CHECKS = {
    "README.md": check_readme,
    "docs/library/ensembles.md": check_ensembles,
    "docs/library/models.md": check_models,
}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_code_block_runs(page, page_files, tmp_path, monkeypatch):
    name = str(page.relative_to(ROOT))
    blocks = code_blocks(page.read_text())
    for language, _, reason, line in blocks:
        assert language in ("python", "bash") or reason, f"{name}:{line}: a ```{language} block: mark it not run"
    runnable = [b for b in blocks if b[2] is None]
    shutil.copytree(page_files, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for language, body, _, line in runnable:
        where = f"{name}, the {language} block at line {line}"
        if language == "python":
            exec(compile(body, where, "exec"), namespace)
        else:
            run_shell(body, tmp_path, where)
    if name in CHECKS:
        CHECKS[name](namespace)
