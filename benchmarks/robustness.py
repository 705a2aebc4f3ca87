"""Clean, mean-corruption and PGD-40 accuracy of trained runs, over their seeds: the figures of
docs/robustness.md.

    python benchmarks/robustness.py RUN [RUN ...] [--images 10000] [--json FILE]
    python benchmarks/robustness.py --table FILE [FILE ...]

Each RUN is a folder ``mnistfx train`` wrote. Every run is scored on the first ``--images`` test images:
clean, each of MNIST-C's 15 corruptions (made once, by ``mnistfx.corrupt`` with seed 0, and written in
MNIST-C's layout to a temporary folder that every run reads: what ``mnistfx robustness --mnist-c`` does
with the published files) and PGD with 40 steps of 0.01 at ε 0.3 from a random start (seed 0). Then the
runs are grouped by model, recipe and ensemble size, and a Markdown table printed: the mean ± standard
deviation over the group's seeds, and the range of the runs' training times (from their weights' metadata:
the machine they trained on gives the times their meaning). ``--json`` also writes one line per run.
Needs the ``robustness`` extra. Takes about a minute per run of ``tuned`` on 2 cores.
``--table`` prints the table of runs scored before, from the lines ``--json`` wrote (scoring nothing).
"""

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

import mnistfx


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--json", type=Path, help="also write one JSON line per run here")
    ap.add_argument("--table", nargs="+", type=Path, metavar="FILE", help="tabulate the lines --json wrote")
    args = ap.parse_args()
    if args.table:
        if args.runs:
            ap.error("give runs to score, or --table FILE ... to tabulate runs scored before, not both")
        print(table([json.loads(line) for f in args.table for line in f.read_text().splitlines() if line.strip()]))
        return
    if not args.runs:
        ap.error("give at least one run folder to score (or --table FILE ...)")
    data = mnistfx.load_mnist()
    images, labels = data.test_images[: args.images], data.test_labels[: args.images]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in mnistfx.CORRUPTIONS:
            (Path(folder) / name).mkdir()
            corrupted = mnistfx.corrupt(images, name, seed=0).numpy()[..., None]
            np.save(Path(folder) / name / "test_images.npy", corrupted)
            np.save(Path(folder) / name / "test_labels.npy", labels.numpy())
        for run in args.runs:
            weights = mnistfx.load_model_weights(run / "weights.safetensors")
            meta = weights.metadata
            r = mnistfx.robustness(weights, images, labels, attacks=("pgd",), eps=(0.3,), mnist_c=folder)
            cfg = meta["config"]
            row = {
                "run": str(run),
                "model": cfg["model"],
                "recipe": cfg["recipe"],
                "ensemble": cfg["ensemble"],
                "seed": cfg["seed"],
                "train_seconds": meta["seconds"],
                "clean": r.clean,
                "mean_corruption": r.mean_corruption,
                "pgd40_eps0.3": r.attacks["pgd"]["0.3"],
                "corruptions": r.corruptions,
                "images": r.images,
                "eval_seconds": r.settings["seconds"],
            }
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "corruptions"}), flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print(table(rows))
    print(f"\n{len(images):,} test images; {mnistfx.cpu_description()}")


def table(rows: list[dict]) -> str:
    """Markdown rows: mean ± std over each group's seeds (percent), and the range of training times."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["recipe"], row["ensemble"])].append(row)
    lines = ["| model | recipe | seeds | clean | mean corruption | PGD-40 ε 0.3 | time per run |", "|---" * 7 + "|"]

    def stat(group: list[dict], key: str) -> str:
        values = [100 * r[key] for r in group]
        if len(values) == 1:
            return f"{values[0]:.2f} %"
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} %"

    for (model, recipe, ensemble), group in groups.items():
        seconds = [r["train_seconds"] for r in group]
        name = model if ensemble == 1 else f"{model} × {ensemble}"
        seeds = ", ".join(str(r["seed"]) for r in group)
        lines.append(
            f"| `{name}` | {recipe} | {seeds} | {stat(group, 'clean')} | {stat(group, 'mean_corruption')} | "
            f"{stat(group, 'pgd40_eps0.3')} | {min(seconds):.0f}–{max(seconds):.0f} s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
