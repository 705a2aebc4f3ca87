"""How well `mnistfx read` reads numbers: digit and whole-string accuracy on composed photos.

    python benchmarks/read_accuracy.py WEIGHTS [--strings 1000] [--digits 6] [--seed 0] [--jpeg 85]

Each number is made of random MNIST test digits (tests/composed.py: 1.5-4× their 28 px, gaps of
3 px to 0.4× the tallest digit, never touching, baselines jittered, paper with a gradient, grain
and blur; every fourth one light on dark), encoded as a PNG (or as a JPEG with ``--jpeg``) and read
from its bytes as ``mnistfx.read_number`` reads it (the digits of 100 numbers classified in one
batch). Digit accuracy is 1 - (digits missed, added or misread: the edit distance) / digits;
string accuracy counts the numbers read exactly. Also prints how well the model reads the same
digits as MNIST's own 28×28 images (about the best a reading can reach). Prints one JSON line.
"""

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import mnistfx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from composed import compose, digit_errors  # noqa: E402

CHUNK = 100  # numbers whose digits go through the model in one batch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--strings", type=int, default=1000)
    ap.add_argument("--digits", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jpeg", type=int, metavar="QUALITY", help="encode as JPEG of this quality, not PNG")
    args = ap.parse_args()
    data = mnistfx.load_mnist()
    weights = mnistfx.load_model_weights(args.weights)
    rng = np.random.default_rng(args.seed)
    errors = wrong = miscounted = 0
    seconds = 0.0
    raw = (weights.probabilities(data.test_images).argmax(1) == data.test_labels).tolist()
    alone = []  # whether the model reads each digit right as the 28×28 MNIST image
    for first in range(0, args.strings, CHUNK):
        numbers, files = [], []
        for k in range(first, min(first + CHUNK, args.strings)):
            picks = rng.integers(len(data.test_images), size=args.digits)
            alone += [raw[i] for i in picks]
            numbers.append(
                compose(rng, data.test_images, data.test_labels, args.digits, light_on_dark=k % 4 == 3, indices=picks)
            )
            buffer = io.BytesIO()
            Image.fromarray(numbers[-1].image).save(
                buffer, *(("JPEG",) if args.jpeg else ("PNG",)), **({"quality": args.jpeg} if args.jpeg else {})
            )
            files.append(buffer.getvalue())
        start = time.perf_counter()
        # mnistfx.read_number of each file, with the digits of CHUNK files in one batch through the model
        found = [mnistfx.find_digits(f) for f in files]
        digits = iter(weights.probabilities(torch.stack([d.image for fs in found for d in fs])).argmax(1).tolist())
        texts = ["".join(str(next(digits)) for _ in fs) for fs in found]
        seconds += time.perf_counter() - start
        for number, text in zip(numbers, texts, strict=True):
            errors += digit_errors(number.text, text)
            wrong += text != number.text
            miscounted += len(text) != len(number.text)
    print(
        json.dumps(
            {
                "strings": args.strings,
                "digits": args.digits,
                "seed": args.seed,
                "format": f"JPEG {args.jpeg}" if args.jpeg else "PNG",
                "digit_accuracy": round(1 - errors / (args.strings * args.digits), 5),
                "string_accuracy": round(1 - wrong / args.strings, 5),
                "strings_with_a_digit_missed_or_added": miscounted,
                "model_alone": {  # the same digits as MNIST's 28×28 images, classified directly
                    "digit_accuracy": round(sum(alone) / len(alone), 5),
                    "string_accuracy": round(
                        sum(map(all, zip(*[iter(alone)] * args.digits, strict=True))) / args.strings, 5
                    ),
                },
                "seconds_per_string": round(seconds / args.strings, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
