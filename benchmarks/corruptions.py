"""Seconds to apply each of MNIST-C's 15 corruptions (``mnistfx.corrupt``) to the 10,000 MNIST test images.

    python benchmarks/corruptions.py [--images 10000] [--rounds 1] [--json]

Each corruption is applied once to 100 images first (warm-up: imports, first calls), then ``--rounds``
times to the first ``--images`` test images, one call each, in one process; prints the median seconds of
each, the total, and the CPU. Needs the ``robustness`` extra.
"""

import argparse
import json
import statistics
import time

import mnistfx


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    args = ap.parse_args()
    images = mnistfx.load_mnist().test_images[: args.images]
    seconds = {}
    for name in mnistfx.CORRUPTIONS:
        mnistfx.corrupt(images[:100], name, seed=0)
        times = []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            mnistfx.corrupt(images, name, seed=r)
            times.append(time.perf_counter() - t0)
        seconds[name] = statistics.median(times)
        line = {"corruption": name, "images": len(images), "seconds": round(seconds[name], 2)}
        print(json.dumps(line) if args.json else f"{name:14} {seconds[name]:6.2f} s", flush=True)
    total = {"total_seconds": round(sum(seconds.values()), 1), "cpu": mnistfx.cpu_description()}
    print(json.dumps(total) if args.json else f"{'all 15':14} {total['total_seconds']:6.1f} s on {total['cpu']}")


if __name__ == "__main__":
    main()
