"""One process against N data-parallel processes on this machine, for the same short run.

    python benchmarks/data_parallel.py [--nproc 2] [--rounds 2] [--model tuned] [--epochs 2] [--train-size N]

Runs ``mnistfx train MODEL --epochs E --no-test`` in one process and with ``--nproc N``,
alternating, ``--rounds`` times each (a fresh run folder each time, the inductor cache warm after
the first round), and prints for each the training img/s of every epoch (from the run's history:
global images per second of the steps, without validation), the wall time of the whole command,
and the validation accuracy, as JSON lines, then the median ratio of the img/s.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MNISTFX = os.path.join(os.path.dirname(sys.executable), "mnistfx")


def run(args, nproc, out):
    cmd = [MNISTFX, "train", args.model, "--epochs", str(args.epochs), "--no-test", "--json", "--out", str(out)]
    if args.train_size:
        cmd += ["--train-size", str(args.train_size)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    summary = json.loads(done.stdout)
    return {
        "processes": nproc,
        "img_per_s": [h["img_per_s"] for h in summary["history"]],
        "wall_s": round(wall, 1),
        "val_accuracy": summary["val_accuracy"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="tuned")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-size", type=int, help="train on this many images (default: all 55,000)")
    args = ap.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            one = run(args, 1, Path(tmp) / f"one{r}")
            many = run(args, args.nproc, Path(tmp) / f"many{r}")
            for result in (one, many):
                print(json.dumps({"model": args.model, "round": r, **result}), flush=True)
            ratios.append(statistics.median(many["img_per_s"]) / statistics.median(one["img_per_s"]))
    print(
        json.dumps(
            {"model": args.model, "nproc": args.nproc, "img_per_s_ratio_median": round(statistics.median(ratios), 3)}
        )
    )


if __name__ == "__main__":
    main()
