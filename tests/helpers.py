"""Helpers the test files share (fixtures live in conftest.py)."""

import os
import sys

from mnistfx_cli.main import main

MNISTFX = os.path.join(os.path.dirname(sys.executable), "mnistfx")  # the installed console script


def run_cli(capsys, *args):
    """Run ``mnistfx ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    """A non-zero exit and one ``error:`` line on stderr holding every fragment, no traceback."""
    assert code != 0
    lines = err.rstrip("\n").split("\n")  # a blank line before the error counts as a line
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def same_bits(a: dict, b: dict) -> bool:
    """Two tensor dicts with the same names, dtypes, shapes and bytes."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and a[k].cpu().numpy().tobytes() == b[k].cpu().numpy().tobytes()
        for k in a
    )


def optimiser_trajectories(data, opt, make_torch_opt, steps, before_torch_step=None):
    """``tuned``'s parameters after ``steps`` updates of ``opt`` and of ``make_torch_opt(parameters)`` from the
    same gradients (batches of 32 of ``data``): ``(ours, torch's, our optimiser state)``. ``before_torch_step``
    sees torch's parameters, their gradients set, before each of its steps (e.g. to clip them)."""
    from torch.func import grad
    from torch.nn import functional as F

    import mnistfx

    model = mnistfx.get_model("tuned")
    params = model.init(0)
    state = opt.init(params)
    theirs = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    reference = make_torch_opt(theirs.values())

    def loss_fn(p, x, y):
        return F.cross_entropy(model.apply(p, x), y)

    for i in range(steps):
        x = model.preprocess(data.train_images[32 * i : 32 * (i + 1)])
        grads = grad(loss_fn)(params, x, data.train_labels[32 * i : 32 * (i + 1)])
        params, state = opt.update(grads, state, params)
        for k, p in theirs.items():
            p.grad = grads[k].clone()
        if before_torch_step:
            before_torch_step(list(theirs.values()))
        reference.step()
    return params, {k: p.detach() for k, p in theirs.items()}, state


def train_and_resume_from_step_4(cfg, data, tmp_path):
    """``cfg`` trained whole (checkpointing every 4 steps), and resumed from its checkpoint at step 4:
    ``(full, resumed)``, to be compared bit for bit."""
    import shutil

    import mnistfx

    def keep(kind, **info):
        if kind == "checkpoint" and info["step"] == 4:
            shutil.copytree(tmp_path / "run", tmp_path / "at-4")

    full = mnistfx.train(cfg, data=data, checkpoint_dir=tmp_path / "run", checkpoint_every=4, on_event=keep, test=False)
    return full, mnistfx.resume(tmp_path / "at-4", data=data, test=False)
