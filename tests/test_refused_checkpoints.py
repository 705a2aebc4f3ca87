"""Refused: checkpoints and run folders given to --resume or taken by a new run: tampered, finished, in the way.

Each case (its id is its name) must end in one line, ``error: ...``, that names the problem, a non-zero
exit, no traceback, and no file created or changed. Fixtures come from conftest.py.
"""

import json

import torch
from refusals import Cases

from mnistfx_cli.main import main

case = Cases()


def _tampered(tmp_path, checkpoint_parts, change):
    from safetensors.torch import save_file

    tensors, meta = checkpoint_parts()
    change(tensors, meta)
    (tmp_path / "run").mkdir()
    save_file(
        tensors, tmp_path / "run" / "checkpoint.safetensors", metadata={k: json.dumps(v) for k, v in meta.items()}
    )
    return ["train", "--resume", str(tmp_path / "run")]


@case("no checkpoint in", "folder of a run")
def resume_from_a_folder_without_a_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    return ["train", "--resume", str(tmp_path / "run")]


@case("does not fit its run", "not a permutation", "without --resume")
def checkpoint_order_out_of_range(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: t.update(perm=t["perm"] + 10_000))


@case("not a permutation")
def checkpoint_order_all_zeros(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: t.update(perm=torch.zeros_like(t["perm"])))


@case("a shuffle generator state that is not a uint8 vector")
def checkpoint_generator_state_of_floats(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: t.update({"rng/shuffle": t["rng/shuffle"].float()}))


@case("a loss sum that is not one finite float32")
def checkpoint_loss_sum_that_is_a_vector(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: t.update(loss_sum=torch.zeros(3)))


@case("an optimiser step count that is not 4")
def checkpoint_step_count_that_is_a_vector(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: t.update({"opt/step": torch.zeros(3)}))


@case("incomplete or damaged", "lr must be a positive number, not 'fast'")
def checkpoint_config_field_of_the_wrong_type(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: m["config"].update(lr="fast"))


@case("epochs must be a whole number from 1 to 10000, not 1000000000000")
def checkpoint_config_of_absurd_size(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: m["config"].update(epochs=10**12))


@case("epoch must be a whole number", "not '1'")
def checkpoint_position_that_is_a_string(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: m.update(epoch="1"))


@case("a config has no field 'path'")
def checkpoint_config_with_an_unknown_field(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: m["config"].update(path="/etc"))


@case("holds NaN or infinite values")
def checkpoint_with_nan_parameters(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: t["params/fc1.bias"].fill_(float("nan")))


@case("weights.safetensors is in the way (not a regular file)")
def run_file_taken_by_a_folder(tmp_path, weights):
    (tmp_path / "run" / "weights.safetensors").mkdir(parents=True)
    return ["train", "tuned", "--no-compile", "--epochs", "1", "--train-size", "64", "--out", str(tmp_path / "run")]


def _finished_run(out):
    """``mnistfx train`` of a tiny run into ``out``, finished: the command line that made it."""
    argv = ["train", "tuned", "--no-compile", "--epochs", "1", "--train-size", "64", "--val-size", "500",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return argv


@case("holds a finished run", "pass --overwrite")
def output_folder_holding_a_finished_run(tmp_path):
    return _finished_run(tmp_path / "run")  # the same command must now refuse to replace it


@case("holds a finished run, with its weights: there is nothing to resume")
def resume_of_a_finished_run(tmp_path):
    _finished_run(tmp_path / "run")
    return ["train", "--resume", str(tmp_path / "run")]


@case("incomplete or damaged", "compile_seconds must be a number of seconds")
def checkpoint_with_a_number_too_large_for_a_float(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: m.update(compile_seconds=10**400))


@case("lr must be a positive number, not 1000000000000000000000000000000000000...")
def checkpoint_lr_too_large_for_a_float(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: m["config"].update(lr=10**400))


@case("an Adam second moment below zero")
def checkpoint_with_a_negative_second_moment(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: t["opt/nu/fc1.bias"].fill_(-1.0))


@case("a dropout generator state of 16 bytes, not a CPU generator's")
def checkpoint_generator_state_cut_short(tmp_path, checkpoint_parts):
    return _tampered(tmp_path, checkpoint_parts, lambda t, m: t.update({"rng/dropout": t["rng/dropout"][:16].clone()}))


@case("is not a run's checkpoint.safetensors")
def resume_from_a_stray_file(tmp_path):
    (tmp_path / "notes.txt").write_text("a file beside a run")
    return ["train", "--resume", str(tmp_path / "notes.txt")]


test_refused = case.test()
