"""Refused: settings of train, bench and plot: numbers out of range or without end, and output paths.

Each case (its id is its name) must end in one line, ``error: ...``, that names the problem, a non-zero
exit, no traceback, and no file created or changed. Fixtures come from conftest.py.
"""

import json
import shutil

from refusals import Cases

case = Cases()


def _train(tmp_path, *bad):
    """`mnistfx train` with one bad value, kept short in case the value were ever accepted."""
    short = {"--epochs": "1", "--train-size": "64"}
    extra = [a for k, v in short.items() if k not in bad for a in (k, v)]
    return ["train", *bad, "--no-compile", *extra, "--out", str(tmp_path / "run")]


@case("--ensemble", "0 is not in the range 1<=x<=64")
def an_ensemble_of_none(tmp_path):
    return _train(tmp_path, "tuned", "--ensemble", "0")


@case("--lr has 3 values for 2 member(s)", "one per member")
def a_sweep_of_the_wrong_length(tmp_path):
    return _train(tmp_path, "tuned", "--ensemble", "2", "--lr", "1e-3,2e-3,3e-3")


@case("--lr has 2 values for 1 member(s)", "--ensemble 2")
def a_sweep_without_an_ensemble(tmp_path):
    return _train(tmp_path, "tuned", "--lr", "1e-3,2e-3")


@case("--lr", "'' is not a valid float")
def a_sweep_with_an_empty_value(tmp_path):
    return _train(tmp_path, "tuned", "--ensemble", "2", "--lr", "1e-3,,2e-3")


@case("one-cycle schedule rises over --warmup (0.01)", "choose another --warmup, or more --epochs")
def a_one_cycle_without_steps_to_rise(tmp_path):
    return _train(tmp_path, "tuned", "--schedule", "one-cycle", "--warmup", "0.01")


@case("--aug-noise, --aug-erase and --aug-elastic follow the default warp", "--no-augment or --faithful-fill")
def augmentations_without_the_warp(tmp_path):
    return _train(tmp_path, "tuned", "--aug-erase", "0.5", "--no-augment")


@case("--aug-elastic-sigma", "7.0 is not in the range 0<x<=6")
def an_elastic_field_too_smooth_for_the_image(tmp_path):
    return _train(tmp_path, "tuned", "--aug-elastic", "34", "--aug-elastic-sigma", "7")


@case("--dp-noise must be 0", "between 0.1 and 1000, not 1e-300")
def a_noise_the_accountant_cannot_take(tmp_path):
    return _train(tmp_path, "dpcnn", "--dp-noise", "1e-300")


@case("DP-SGD trains in one process here", "or without --dp-noise")
def private_training_in_two_processes(tmp_path):
    return _train(tmp_path, "dpcnn", "--dp-noise", "1.1", "--batch-size", "32", "--nproc", "2")


@case("has state (batch norm), which mixes the examples")
def private_training_of_a_model_with_batch_norm(tmp_path):
    return _train(tmp_path, "resnet", "--dp-noise", "1.1", "--label-smoothing", "0", "--batch-size", "32")


@case("adam has no weight decay", "--optimizer adamw")
def weight_decay_with_adam(tmp_path):
    return _train(tmp_path, "tuned", "--weight-decay", "0.01")


@case("--optimizer", "'lbfgs' is not one of")
def an_unknown_optimizer(tmp_path):
    return _train(tmp_path, "tuned", "--optimizer", "lbfgs")


@case("--momentum", "1.0 is not in the range 0<=x<1")
def momentum_of_one(tmp_path):
    return _train(tmp_path, "tuned", "--optimizer", "sgd", "--momentum", "1")


@case("--ensemble", "1 is not in the range 2<=x<=64")
def bench_an_ensemble_of_one():
    return ["bench", "--ensemble", "1"]


@case("--epochs", "0 is not in the range 1<=x<=10000")
def zero_epochs(tmp_path):
    return _train(tmp_path, "tuned", "--epochs", "0")


@case("--epochs", "-3 is not in the range 1<=x<=10000")
def negative_epochs(tmp_path):
    return _train(tmp_path, "tuned", "--epochs", "-3")


@case("--batch-size", "0 is not in the range 1<=x<=8192")
def zero_batch_size(tmp_path):
    return _train(tmp_path, "tuned", "--batch-size", "0")


@case("--batch-size", "-4 is not in the range 1<=x<=8192")
def negative_batch_size(tmp_path):
    return _train(tmp_path, "tuned", "--batch-size", "-4")


@case("--lr", "'fast' is not a valid float")
def learning_rate_that_is_not_a_number(tmp_path):
    return _train(tmp_path, "tuned", "--lr", "fast")


@case("--lr", "-1.0 is not a positive number")
def negative_learning_rate(tmp_path):
    return _train(tmp_path, "tuned", "--lr", "-1")


@case("batch-size 6400 is larger than the 3200 training images")
def batch_larger_than_the_data(tmp_path):
    return _train(tmp_path, "tuned", "--train-size", "3200", "--batch-size", "6400")


@case("holds no per-epoch history mnistfx can read", "entry 4: epoch 3, not a whole number from 4 to 10,000")
def plot_of_a_history_whose_epochs_go_back(tmp_path, weights):

    (tmp_path / "run").mkdir()
    shutil.copy(weights, tmp_path / "run" / "weights.safetensors")
    history = [{"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5} for e in (1, 2, 3, 3)]
    (tmp_path / "run" / "history.json").write_text(json.dumps({"history": history}))
    return ["plot", str(tmp_path / "run")]


@case("weights.safetensors does not exist: pass the folder of a run (or a file in it)")
def plot_of_weights_that_are_not_there(tmp_path):
    return ["plot", str(tmp_path / "run" / "weights.safetensors")]


@case("output path", "is a file: pass --out with a folder")
def output_path_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("mine")
    return ["train", "tuned", "--no-compile", "--out", str(tmp_path / "taken")]


@case("cannot write to output folder")
def output_path_that_is_not_writable(tmp_path):
    # Below a file nobody can create a folder, root included.
    (tmp_path / "file").write_text("x")
    return ["train", "tuned", "--no-compile", "--out", str(tmp_path / "file" / "run")]


@case("training diverged at epoch 1", "lower --lr")
def learning_rate_so_high_the_loss_is_not_finite(tmp_path):
    return _train(tmp_path, "tuned", "--lr", "1e30")


@case("--lr", "nan is not a positive number")
def learning_rate_nan(tmp_path):
    return _train(tmp_path, "tuned", "--lr", "nan")


@case("--seconds", "nan is not a positive number")
def bench_seconds_not_a_number():
    return ["bench", "--seconds", "nan", "--json"]


@case("--epochs", "is not in the range 1<=x<=10000")
def epochs_that_overflow(tmp_path):
    return _train(tmp_path, "tuned", "--epochs", "99999999999999999999999")


@case("--checkpoint-every", "is not in the range 1<=x<=1000000000")
def checkpoint_every_absurd(tmp_path):
    return _train(tmp_path, "tuned", "--checkpoint-every", str(10**30))


@case("--seconds", "1000000000.0 is not in the range 0<x<=60.0")
def bench_seconds_without_end():
    return ["bench", "--seconds", "1e9"]


@case("--repeats", "is not in the range 1<=x<=100")
def bench_repeats_without_end():
    return ["bench", "--repeats", str(10**20)]


@case("--batch-size", "60000 is not in the range 1<=x<=8192")
def bench_batch_of_the_whole_data_set():
    return ["bench", "--batch-size", "60000"]


@case("cannot read weights", "no\\nsuch.safetensors")
def path_with_a_newline(tmp_path):
    return ["eval", str(tmp_path / "no\nsuch.safetensors")]


@case("holds no per-epoch history mnistfx can read", "entry 1: train_loss nan, not a finite number")
def plot_of_a_run_whose_history_is_damaged(tmp_path, weights):

    (tmp_path / "run").mkdir()
    shutil.copy(weights, tmp_path / "run" / "weights.safetensors")
    (tmp_path / "run" / "history.json").write_text('{"history": [{"epoch": 1, "train_loss": NaN}]}')
    return ["plot", str(tmp_path / "run")]


@case("holds no per-epoch history mnistfx can read", "entry 1: train_loss -1e+308", "from -1e+06 to 1e+06")
def plot_of_a_history_of_extreme_numbers(tmp_path, weights):

    (tmp_path / "run").mkdir()
    shutil.copy(weights, tmp_path / "run" / "weights.safetensors")
    history = [{"epoch": e, "train_loss": 1e308 * (-1) ** e, "val_loss": 1.0, "val_accuracy": 0.5} for e in (1, 2)]
    (tmp_path / "run" / "history.json").write_text(json.dumps({"history": history}))
    return ["plot", str(tmp_path / "run")]


@case("output path", "is a file: pass --out with a folder")
def nproc_output_path_that_is_a_file(tmp_path):
    (tmp_path / "mine").write_text("a file of the user's")  # refused before any process starts
    return [
        "train",
        "tuned",
        "--nproc",
        "2",
        "--no-compile",
        "--epochs",
        "1",
        "--train-size",
        "640",
        "--out",
        str(tmp_path / "mine"),
    ]


test_refused = case.test()
