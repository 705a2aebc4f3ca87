"""The notebook's training loop against mnistfx's, same recipe, same steps, one process.

    python benchmarks/notebook_vs_mnistfx.py [--model tuned] [--steps 600] [--rounds 3]

The notebook's loop: torchvision's ``MNIST`` dataset with its per-image PIL transforms, a
``DataLoader`` (batch 32, shuffled), the ``nn.Module``, ``torch.optim.Adam`` (1e-3),
cross-entropy, and ``loss.item()`` every step. mnistfx's: ``mnistfx.train`` with the same
recipe (batch 32, Adam 1e-3, the same augmentation) on ``steps x 32`` training images for
one epoch, i.e. the same number of steps. The two alternate for ``rounds`` rounds; each
timing starts after the first step (mnistfx's compiles), and mnistfx's figure is the one its
own history reports. Prints img/s for both and their ratio, per round and the median.
"""

import argparse
import statistics
import time

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision.datasets import MNIST

import mnistfx
from mnistfx.models.notebook_cnns import NotebookNet, train_transform


def notebook_img_per_s(model: str, root, steps: int, batch: int = 32) -> float:
    """img/s of ``steps`` steps of the notebook's loop, timed from its second step."""
    dataset = MNIST(str(root), train=True, transform=train_transform(model), download=False)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True)
    net = NotebookNet(model).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for i, (x, y) in enumerate(loader):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        loss.item()
        if i == steps:
            break
    return steps * batch / (time.perf_counter() - t0)


def mnistfx_img_per_s(model: str, data, steps: int, batch: int = 32) -> tuple[float, float]:
    """(img/s, compile seconds) of one mnistfx epoch of ``steps`` steps, as its history reports it."""
    config = mnistfx.recipe(model, epochs=1, batch_size=batch, train_size=steps * batch)
    run = mnistfx.train(config, data=data)
    return run.history[0]["img_per_s"], run.compile_seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tuned", choices=mnistfx.MODELS)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)  # the notebook's module and loader draw from the global RNG
    root = mnistfx.default_root()
    data = mnistfx.load_mnist(root)
    print(
        f"{args.model}, batch 32, {args.steps} steps per run, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n{mnistfx.cpu_description()}"
    )
    print(f"{'round':>5} {'notebook img/s':>15} {'mnistfx img/s':>14} {'ratio':>6} {'compile s':>10}")
    ratios, ours, theirs = [], [], []
    for r in range(1, args.rounds + 1):
        nb = notebook_img_per_s(args.model, root, args.steps)
        fx, compile_s = mnistfx_img_per_s(args.model, data, args.steps)
        theirs.append(nb), ours.append(fx), ratios.append(fx / nb)
        print(f"{r:>5} {nb:>15,.0f} {fx:>14,.0f} {fx / nb:>5.1f}x {compile_s:>10.1f}", flush=True)
    print(
        f"{'median':>5} {statistics.median(theirs):>15,.0f} {statistics.median(ours):>14,.0f} "
        f"{statistics.median(ratios):>5.1f}x"
    )


if __name__ == "__main__":
    main()
