"""A run's state between two steps, as one value: :class:`TrainState`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrainState:
    """Everything that changes while a run trains, at one point of it.

    With the run's config and history it is the whole run: a checkpoint is this state written out, and
    :func:`~mnistfx.train`'s ``on_epoch`` hook receives it after each epoch.

    Attributes:
        params: the parameters (an ensemble's stacked on a leading member axis).
        model_state: the model's state (``{}`` for a model without state).
        opt_state: the optimiser state: ``step``, ``hyper`` (its hyperparameters) and its buffers.
        rng: the state of each of the run's random generators (shuffle, augment, dropout, gaussian), as
            uint8 tensors (``torch.Generator.get_state``).
        epoch: the epoch in progress (from 1).
        step: steps of that epoch done.
        perm: the epoch's order of training images (``None`` once the epoch is finished).
        loss_sum: the sum of the epoch's step losses so far.
    """

    params: dict[str, torch.Tensor]
    model_state: dict[str, torch.Tensor]
    opt_state: dict
    rng: dict[str, torch.Tensor]
    epoch: int
    step: int
    perm: torch.Tensor | None
    loss_sum: torch.Tensor
