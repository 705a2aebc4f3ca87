"""Internal: the original notebook's own formulation, kept for comparisons: its ``nn.Module`` and its
per-image training transforms. mnistfx itself never trains through these; the tests check
that :meth:`Model.apply` matches the module, and ``benchmarks/notebook_vs_mnistfx.py`` times
the notebook's training loop against mnistfx's."""

from __future__ import annotations

from torch import nn
from torchvision import transforms

from .pth import to_notebook_state_dict  # noqa: F401 (loads mnistfx params into NotebookNet)
from .reference import ARCHS


class NotebookNet(nn.Module):
    """The notebook's model: ``Convolutional_layers`` then ``Linear_layers``, as nn.Sequential.

    Its parameters are created by PyTorch's default init from the global RNG, as in the
    notebook; load mnistfx parameters with :func:`to_notebook_state_dict`.
    """

    def __init__(self, name: str):
        super().__init__()
        a = ARCHS[name]
        pool = {"max": nn.MaxPool2d(2), "avg": nn.AvgPool2d(2), None: nn.Identity()}
        self.Convolutional_layers = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.Dropout2d(a.conv_drop[0]), pool[a.pool1],
            nn.Conv2d(8, 16, 3, padding=1), nn.Dropout2d(a.conv_drop[1]), pool[a.pool2])
        layers = []
        for n_in, n_out, p in zip(a.fc[:-2], a.fc[1:-1], a.fc_drop):
            layers += [nn.Linear(n_in, n_out), nn.ReLU(), nn.Dropout(p)]
        self.Linear_layers = nn.Sequential(*layers, nn.Linear(a.fc[-2], a.fc[-1]))

    def forward(self, x):
        return self.Linear_layers(self.Convolutional_layers(x).flatten(1))


def train_transform(name: str):
    """The notebook's per-image training transform for PIL images: a random rotation of ±15°, then
    a random shift of ±10 % and scale of 0.9-1.1 (nearest, fill 0); ``tuned`` normalises between the two."""
    rotate = transforms.RandomRotation(15)
    affine = transforms.RandomAffine(0, translate=(0.1, 0.1), scale=(0.9, 1.1))
    if ARCHS[name].normalize:
        return transforms.Compose([rotate, transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,)), affine])
    return transforms.Compose([rotate, affine, transforms.ToTensor()])
