"""One rank of a data-parallel test, started by tests/test_distributed.py with torchrun's variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) as torchrun would.

    python dp_worker.py step OUT          one train step on this rank's shard of a fixed global batch
    python dp_worker.py train OUT [STOP]  a short compiled run (stopped by rank 0 at step STOP of epoch 1 if given)
    python dp_worker.py eager OUT [STOP]  the same run, eager
    python dp_worker.py resume OUT        resume that run from OUT/run

Each rank writes its parameters and state to OUT/rank<R>.safetensors.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import mnistfx
from mnistfx.training import distributed
from mnistfx.training.batches import batch_inputs
from mnistfx.training.optim import sgd
from mnistfx.training.step import make_train_step

BATCH = 64


def small_config(**overrides):
    """The run the train, eager and resume modes share: tuned, two epochs of 1,280 images."""
    return mnistfx.recipe(
        "tuned", **{"epochs": 2, "train_size": 1280, "batch_size": BATCH, "val_size": 1000, "seed": 5, **overrides}
    )


def one_step(parallel, data):
    """One step of tuned on the fixed batch ``range(BATCH)``: the whole batch alone, or this rank's shard."""
    model = mnistfx.get_model("tuned")
    opt = sgd(0.1)  # linear in the gradient: a float difference stays one (Adam's first step is about sign(g))
    params = model.init(0)
    idx = torch.arange(BATCH)
    rows = None if parallel is None else distributed.shard_rows(parallel, 1, BATCH)
    x, noise = batch_inputs(model, data.train_images, idx, aug_key=1, drop_key=2, rows=rows)
    y = data.train_labels[idx if rows is None else idx[rows]]
    average = None if parallel is None else distributed.make_average(parallel.world)
    step = make_train_step(model, opt, average=average)
    params, _, _, loss, _ = step(params, {}, opt.init(params), x, y, noise)
    return params, loss


def main(mode, out, stop=None):
    out = Path(out)
    parallel = distributed.from_environment()
    distributed.start(parallel)
    data = mnistfx.load_mnist()
    try:
        if mode == "step":
            params, loss = one_step(parallel, data)
            save_file({**params, "loss": loss.reshape(1)}, out / f"rank{parallel.rank}.safetensors")
            return
        if mode in ("train", "eager"):

            def on_event(kind, **info):
                if stop and kind == "checkpoint" and (info["epoch"], info["step"]) == (1, int(stop)):
                    raise KeyboardInterrupt  # rank 0 is stopped here, after its checkpoint

            run = mnistfx.train(
                small_config(compile=mode == "train"),
                data=data,
                checkpoint_dir=out / "run",
                checkpoint_every=4,
                on_event=on_event if parallel.main else None,
                test=False,
                parallel=parallel,
            )
        else:
            run = mnistfx.resume(out / "run", data=data, test=False, parallel=parallel)
        save_file(
            {**run.params, **{f"state/{k}": v for k, v in run.state.items()}}, out / f"rank{parallel.rank}.safetensors"
        )
        if parallel.main:
            (out / "history.json").write_text(json.dumps(run.history))
    finally:
        distributed.stop()


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except (mnistfx.MnistfxError, KeyboardInterrupt) as e:
        print(f"error: {e or 'interrupted'}", file=sys.stderr)
        sys.exit(1)
