import json

import pytest
import torch
from helpers import assert_one_line_error, run_cli

import mnistfx
from mnistfx import benchmark


def test_bench_json_measures_train_and_inference(capsys):
    code, out, err = run_cli(capsys, "bench", "--batch-size", "64", "--seconds", "0.05", "--repeats", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["model"] == "tuned" and report["device"] == "cpu" and report["torch"] == torch.__version__
    rows = report["results"]
    assert [(r["kind"], r["batch_size"]) for r in rows] == [("train", 64), ("infer", 64)]
    for r in rows:
        assert r["eager"] > 0 and r["compiled"] > 0 and r["compile_seconds"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_bench_on_cuda_without_cuda_is_one_line(capsys):
    code, _, err = run_cli(capsys, "bench", "--device", "cuda")
    assert_one_line_error(code, err, "no CUDA device is available", "--device cpu")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--batch-size", "0"], "0 is not in the range 1<=x<=8192"),
        (["--kind", "eval"], "'eval' is not one of 'train', 'infer'"),
        (["--seconds", "0"], "0.0 is not in the range 0<x<=60.0"),
        (["--model", "lenet"], "unknown model 'lenet'"),
    ],
)
def test_bench_bad_arguments(capsys, args, fragment):
    code, _, err = run_cli(capsys, "bench", *args)
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_sizes": (0,)}, "batch sizes must be whole numbers"),
        ({"batch_sizes": ()}, "batch sizes must be whole numbers"),
        ({"kinds": ("eval",)}, "kinds must be some of train, infer"),
        ({"precision": "fp16"}, "precision must be one of fp32, bf16"),
        ({"repeats": 0}, "repeats must be a whole number"),
        ({"seconds": float("inf")}, "seconds must be a positive number"),
    ],
)
def test_benchmark_checks_its_arguments_before_any_work(kwargs, message):
    with pytest.raises(mnistfx.MnistfxError, match=message):
        benchmark(**kwargs)
