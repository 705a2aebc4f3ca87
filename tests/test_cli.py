import contextlib
import io
import json
import subprocess
import sys

import pytest
import torch
from helpers import MNISTFX, assert_one_line_error, run_cli

import mnistfx
from mnistfx_cli.main import main


def test_help_does_not_import_torch():
    code = (
        "import sys; from mnistfx_cli.main import main; "
        "rc = main(['--help']); assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout and "eval" in done.stdout


def test_console_script_exit_code_and_message():
    done = subprocess.run([MNISTFX, "train", "lenet"], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: ") and "unknown model 'lenet'" in done.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`mnistfx train` for one short epoch, eagerly, with --json."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(
            [
                "train",
                "tuned",
                "--epochs",
                "1",
                "--train-size",
                "3200",
                "--no-compile",
                "--out",
                str(out),
                "--json",
                "--seed",
                "3",
            ]
        )
    assert code == 0
    return out, json.loads(stdout.getvalue())


def test_train_writes_weights_and_history(trained):
    trained, summary = trained
    # --json prints the run's summary, as history.json holds it, and where the files are.
    assert summary == {
        **json.loads((trained / "history.json").read_text()),
        "weights": str(trained / "weights.safetensors"),
        "history_file": str(trained / "history.json"),
    }
    assert sorted(p.name for p in trained.iterdir()) == [
        "checkpoint.safetensors",
        "history.json",
        "weights.safetensors",
    ]
    history = json.loads((trained / "history.json").read_text())
    assert history["model"] == "tuned" and history["seed"] == 3 and len(history["history"]) == 1
    assert history["config"]["train_size"] == 3200 and history["test"]["n"] == 10000
    assert history["test"]["accuracy"] > 0.5  # 100 steps; chance is 0.1


def test_eval_json_and_tables(trained, capsys):
    trained, _ = trained
    code, out, _ = run_cli(capsys, "eval", str(trained / "weights.safetensors"), "--json")
    assert code == 0
    m = json.loads(out)
    assert m["model"] == "tuned" and m["n"] == 10000 and len(m["f1"]) == 10
    assert sum(map(sum, m["confusion"])) == 10000 and m["accuracy"] > 0.5
    code, out, _ = run_cli(capsys, "eval", str(trained / "weights.safetensors"))
    assert code == 0 and "per class" in out and "confusion matrix" in out and "test accuracy" in out


def test_eval_reads_the_notebook_checkpoint(capsys, notebook_ckpt):
    code, out, _ = run_cli(capsys, "eval", str(notebook_ckpt), "--json")
    assert code == 0 and json.loads(out)["correct"] == 9905


def test_predict_reads_png_files(trained, mnist, tmp_path, capsys):
    trained, _ = trained
    from torchvision.transforms.functional import to_pil_image

    paths = []
    for i in range(5):
        path = tmp_path / f"digit{i}.png"
        to_pil_image(mnist.test_images[i]).save(path)
        paths.append(str(path))
    code, out, _ = run_cli(capsys, "predict", str(trained / "weights.safetensors"), *paths, "--json")
    assert code == 0
    rows = json.loads(out)
    w = mnistfx.load_model_weights(trained / "weights.safetensors")
    expected = mnistfx.predict(w.model, w.params, mnistfx.read_digit_images(paths)).tolist()
    assert [r["digit"] for r in rows] == expected
    for r in rows:  # all ten probabilities, the top one the digit
        assert len(r["probabilities"]) == 10 and abs(sum(r["probabilities"]) - 1) < 1e-4
        assert max(range(10), key=r["probabilities"].__getitem__) == r["digit"]
    code, out, _ = run_cli(capsys, "predict", str(trained / "weights.safetensors"), paths[0], "--show")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 29 and all(len(line) == 56 for line in lines[1:])  # the 28×28 it saw


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "tuned", "--device", "cuda"], ["no CUDA device is available", "--device cpu"]),
        (["train", "tuned", "--device", "tpu"], ["device 'tpu'"]),
        (["predict", "WEIGHTS", "/nonexistent.png"], ["cannot read image"]),
    ],
)
def test_bad_arguments(capsys, tuned_weights, args, fragments):
    code, _, err = run_cli(capsys, *[str(tuned_weights) if a == "WEIGHTS" else a for a in args])
    assert_one_line_error(code, err, *fragments)


def test_weights_of_the_other_model(tmp_path):
    cnn = mnistfx.get_model("cnn").init(0)
    with pytest.raises(mnistfx.WeightsError, match="holds .cnn. weights, not tuned"):
        mnistfx.load_model_weights(_saved(tmp_path, cnn, "cnn"), model="tuned")


def test_weights_load_in_the_model_s_order(tmp_path):
    """Not the file's (safetensors reads its tensors in another order in each process): a compiled graph
    traces its input dicts in their order, so the compile cache finds it again only in the same order."""
    model = mnistfx.get_model("resnet")
    params = model.init(0)
    state = {"state/" + k: v for k, v in model.init_state(params).items()}
    path = _saved(tmp_path, dict(reversed([*params.items(), *state.items()])), "resnet")
    w = mnistfx.load_model_weights(path)
    assert list(w.params) == list(model.shapes()) and list(w.state) == list(model.state_shapes())


def _saved(tmp_path, params, name):
    path = tmp_path / f"{name}.safetensors"
    mnistfx.save_weights(path, params, {"model": name})
    return path


def test_data_command_shows_and_verifies(mnist, capsys):
    code, out, _ = run_cli(capsys, "data", "--root", str(mnist.root), "--verify")
    assert code == 0 and "60000 training" in out and out.count("  ok  ") == 4


def test_weights_round_trip_keeps_metadata(tmp_path):
    params = mnistfx.get_model("tuned").init(1)
    path = tmp_path / "w.safetensors"
    mnistfx.save_weights(path, params, {"model": "tuned", "config": {"epochs": 3}, "test_accuracy": 0.99})
    loaded, meta = mnistfx.load_weights(path)
    assert meta == {"model": "tuned", "config": {"epochs": 3}, "test_accuracy": 0.99}
    assert all(torch.equal(loaded[k], params[k]) for k in params)
    assert not list(tmp_path.glob(".*tmp"))


def test_the_notebook_checkpoint_both_ways(notebook_ckpt, trained, mnist, tmp_path, capsys):
    from mnistfx.models.notebook_cnns import NotebookNet

    weights = tmp_path / "notebook.safetensors"
    assert run_cli(capsys, "import-notebook", str(notebook_ckpt), "--out", str(weights))[0] == 0
    code, out, _ = run_cli(capsys, "eval", str(weights), "--json")
    assert code == 0 and json.loads(out)["correct"] == 9905
    code, _, err = run_cli(capsys, "import-notebook", str(notebook_ckpt), "--out", str(weights))
    assert_one_line_error(code, err, "exists: pass --overwrite")
    # Back to the notebook's format: the same tensors as the published file, under the same names.
    back = tmp_path / "back.pth"
    assert run_cli(capsys, "export-notebook", str(weights), "--out", str(back))[0] == 0
    original = torch.load(notebook_ckpt, map_location="cpu", weights_only=True)
    exported = torch.load(back, weights_only=True)
    assert exported.keys() == original.keys() and all(torch.equal(exported[k], original[k].float()) for k in original)
    # A run of mnistfx's own, exported, loads strictly into the notebook's module and predicts the same.
    run, _ = trained
    mine = tmp_path / "mine.pth"
    assert run_cli(capsys, "export-notebook", str(run / "weights.safetensors"), "--out", str(mine))[0] == 0
    with torch.random.fork_rng():  # the notebook's module draws its own init from the global RNG
        net = NotebookNet("tuned").eval()
    net.load_state_dict(torch.load(mine, weights_only=True), strict=True)
    w = mnistfx.load_model_weights(run / "weights.safetensors")
    images = mnist.test_images[:1000]
    with torch.no_grad():
        theirs = net(w.model.preprocess(images)).argmax(1)
    assert torch.equal(theirs, mnistfx.predict(w.model, w.params, images))


def test_terminal_escapes_in_paths_never_reach_the_terminal(tmp_path, capsys):
    out = tmp_path / "e\x1b[2Jz"  # would clear the screen
    code, stdout, err = run_cli(
        capsys,
        "train",
        "tuned",
        "--no-compile",
        "--epochs",
        "1",
        "--train-size",
        "64",
        "--val-size",
        "500",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "\x1b" not in stdout + err and "e\\x1b[2Jz/weights.safetensors" in stdout


def test_plot_draws_the_runs_pictures(trained, tmp_path, capsys):
    from PIL import Image

    run, _ = trained
    figures = tmp_path / "figures"  # a new folder: made
    code, out, err = run_cli(capsys, "plot", str(run), "--out", str(figures))
    assert code == 0, err
    for name in ("history.png", "confusion.png", "mistakes.png"):
        assert f"wrote {figures / name}" in out
        with Image.open(figures / name) as image:
            assert image.format == "PNG" and min(image.size) > 300
    assert not list(figures.glob(".*tmp"))
    (tmp_path / "file").write_text("not a folder")
    for out in (tmp_path / "file", tmp_path / "no" / "such"):
        code, _, err = run_cli(capsys, "plot", str(run), "--out", str(out))
        assert_one_line_error(code, err, f"{out} is not a folder", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "file"]


def test_plot_without_matplotlib_says_how_to_install_it(trained, tmp_path, capsys, monkeypatch):
    import sys

    run, _ = trained
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    code, _, err = run_cli(capsys, "plot", str(run), "--out", str(tmp_path))
    assert_one_line_error(code, err, "plots need matplotlib", "pip install 'mnistfx[plot]'")
    assert list(tmp_path.iterdir()) == []
