"""Do ensemble members need batches of their own? The experiment behind sharing them.

    python benchmarks/ensemble_batches.py [--epochs 3] [--members 5] [--seeds 0 1]

For each seed it trains one ensemble whose members share every batch (``--ensemble K``: one
gather, one augmentation, K members' own initialisation and dropout) and K independent runs
(own seed: own split order, augmentation and dropout), whose mean softmax probabilities make the
second ensemble. Prints the test accuracy of both ensembles and of their members, as JSON lines.
The default recipe's values, fewer epochs. Measured 2026-11-24 (3 epochs, 5 members, seeds 0 and
1): shared 98.60 / 98.61 %, independent 98.68 / 98.57 %; members alone 98.33 / 98.38 % and
98.45 / 98.38 % on average: the same within the runs' spread, so mnistfx shares batches.
"""

import argparse
import json

import torch

import mnistfx


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    data = mnistfx.load_mnist()
    model = mnistfx.get_model("tuned")
    for seed in args.seeds:
        shared = mnistfx.train(mnistfx.recipe("tuned", epochs=args.epochs, seed=seed, ensemble=args.members), data=data)
        runs = [
            mnistfx.train(mnistfx.recipe("tuned", epochs=args.epochs, seed=100 * seed + i + 1), data=data)
            for i in range(args.members)
        ]
        probs = torch.stack([mnistfx.probabilities(model, r.params, data.test_images) for r in runs]).mean(0)
        independent = (probs.argmax(1) == data.test_labels).float().mean().item()
        print(
            json.dumps(
                {
                    "seed": seed,
                    "shared_ensemble": shared.test.accuracy,
                    "shared_members": [m.accuracy for m in shared.member_test],
                    "independent_ensemble": independent,
                    "independent_members": [r.test.accuracy for r in runs],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
