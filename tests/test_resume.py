"""Determinism across processes, checkpoints, resume after SIGKILL, saves and fetches under a kill."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import MNISTFX, assert_one_line_error, run_cli
from helpers import same_bits as _same_bits
from safetensors.torch import load_file

import mnistfx
from mnistfx.data.idx import IDX_FILES
from mnistfx.training.checkpoint import CHECKPOINT_FILE


def test_same_seed_same_bits_in_two_processes(tmp_path):
    args = [
        "train",
        "tuned",
        "--epochs",
        "1",
        "--train-size",
        "1280",
        "--batch-size",
        "64",
        "--seed",
        "7",
        "--val-size",
        "1000",
        "--no-compile",
        "--no-test",  # the bits compared are the weights' and the checkpoint's
    ]
    for name in ("a", "b"):
        done = subprocess.run([MNISTFX, *args, "--out", str(tmp_path / name)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    a, b = (load_file(tmp_path / name / "weights.safetensors") for name in ("a", "b"))
    assert _same_bits(a, b)
    assert _same_bits(load_file(tmp_path / "a" / CHECKPOINT_FILE), load_file(tmp_path / "b" / CHECKPOINT_FILE))


def _small(**overrides):
    return mnistfx.recipe("tuned", **{"epochs": 2, "train_size": 3200, "compile": False, "seed": 4, **overrides})


def test_resume_from_mid_epoch_and_epoch_end_is_bit_equal(mnist, tmp_path):
    import shutil

    def keep(kind, **info):  # copy the run folder as it is at two checkpoints
        if kind == "checkpoint" and (info["epoch"], info["step"]) in {(1, 40), (1, 100)}:
            shutil.copytree(tmp_path / "run", tmp_path / f"at-{info['step']}")

    full = mnistfx.train(_small(), data=mnist, checkpoint_dir=tmp_path / "run", checkpoint_every=20, on_event=keep)
    mid = mnistfx.load_checkpoint(tmp_path / "at-40")
    assert (mid.epoch, mid.step, len(mid.history), mid.perm is not None) == (1, 40, 0, True)
    # read back in a fresh run's order, whatever order the file's tensors come in: a compiled step traces its
    # dicts in their order, and the compile cache finds a resumed run's graph only in the same one
    fresh = mnistfx.make_trainer(_small(), data=mnist).init_state()
    for got, want in ((mid.params, fresh.params), (mid.opt_state, fresh.opt_state)):
        assert list(got) == list(want)
    for part in fresh.opt_state:
        if part != "step":
            assert list(mid.opt_state[part]) == list(fresh.opt_state[part]), part
    end = mnistfx.load_checkpoint(tmp_path / "at-100")
    assert (end.epoch, end.step, len(end.history), end.perm is None) == (1, 100, 1, True)
    for name in ("at-40", "at-100"):
        again = mnistfx.resume(tmp_path / name, data=mnist)
        assert _same_bits(again.params, full.params)
        assert [h["train_loss"] for h in again.history] == [h["train_loss"] for h in full.history]
        assert again.test.accuracy == full.test.accuracy
    last = mnistfx.load_checkpoint(tmp_path / "run")
    assert (last.epoch, last.step) == (2, 100) and _same_bits(last.params, full.params)


def test_a_compiled_run_resumed_in_another_process_gives_the_same_bits(mnist, tmp_path):
    # The default recipe's compiled path: two steps per call, checkpoints only between calls. The run here,
    # and its second half again in another process from a checkpoint taken mid-epoch: bit for bit.
    import shutil

    config = mnistfx.recipe("tuned", epochs=2, train_size=1280, batch_size=64, val_size=1000, seed=7)
    assert config.compile and config.steps_per_call == 2

    def keep(kind, **info):
        if kind == "checkpoint" and (info["epoch"], info["step"]) == (1, 6):
            shutil.copytree(tmp_path / "run", tmp_path / "mid")

    full = mnistfx.train(config, data=mnist, checkpoint_dir=tmp_path / "run", checkpoint_every=5, on_event=keep)
    mid = mnistfx.load_checkpoint(tmp_path / "mid")
    assert (mid.epoch, mid.step) == (1, 6)  # the first call boundary at or after step 5
    resumed = subprocess.run([MNISTFX, "train", "--resume", str(tmp_path / "mid")], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert _same_bits(load_file(tmp_path / "mid" / "weights.safetensors"), full.params)


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(mnist, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            MNISTFX,
            "train",
            "tuned",
            "--epochs",
            "2",
            "--train-size",
            "3200",
            "--no-compile",
            "--checkpoint-every",
            "25",
            "--seed",
            "5",
            "--out",
            str(run_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (run_dir / CHECKPOINT_FILE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = mnistfx.load_checkpoint(run_dir)
    assert ckpt.epoch == 1 and 0 < ckpt.step < 100  # killed mid-epoch (of 100 steps)
    assert not (run_dir / "weights.safetensors").exists()

    done = subprocess.run([MNISTFX, "train", "--resume", str(run_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    uninterrupted = mnistfx.train(ckpt.config, data=mnist, test=False)
    assert _same_bits(load_file(run_dir / "weights.safetensors"), uninterrupted.params)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(["weights.safetensors", "history.json", CHECKPOINT_FILE])


_WRITER = """
import sys
from mnistfx._io import atomic_write_bytes
for i in range(1, 1000):
    atomic_write_bytes(sys.argv[1], bytes([i % 256]) * (8 << 20))
    print(i, flush=True)
"""


def test_a_kill_during_a_save_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(bytes([0]) * (8 << 20))
    for delay in (0.05, 0.13, 0.21, 0.34):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE)
        proc.stdout.readline()  # at least one save done; the kill lands during a later one
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        data = target.read_bytes()
        assert len(data) == 8 << 20 and data.count(data[:1]) == len(data)  # one whole version


class _Stop(Exception):
    pass


def _stop_after_first_epoch(kind):
    if kind == "checkpoint":
        raise _Stop


def test_resume_errors_are_one_line(tmp_path, capsys, mnist):
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path))
    assert_one_line_error(code, err, "no checkpoint in", "folder of a run")
    code, _, err = run_cli(capsys, "train")
    assert_one_line_error(code, err, "Missing argument 'MODEL'", "--resume")
    mnistfx.train(_small(epochs=1, train_size=320), data=mnist, checkpoint_dir=tmp_path)
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path), "--epochs", "3")
    assert_one_line_error(code, err, "drop --epochs")
    code, _, err = run_cli(capsys, "train", "cnn", "--resume", str(tmp_path))
    assert_one_line_error(code, err, "is a run of tuned, not cnn")
    # A new run must not overwrite an interrupted one's checkpoint.
    unfinished = tmp_path / "unfinished"
    with pytest.raises(_Stop):  # interrupted right after its first checkpoint
        mnistfx.train(
            _small(train_size=320),
            data=mnist,
            checkpoint_dir=unfinished,
            on_event=lambda kind, **info: _stop_after_first_epoch(kind),
        )
    code, _, err = run_cli(capsys, "train", "tuned", "--no-compile", "--out", str(unfinished))
    assert_one_line_error(code, err, "holds an unfinished run (epoch 1 of 2)", "--resume")
    done = subprocess.run(
        [MNISTFX, "train", "--resume", str(unfinished / CHECKPOINT_FILE)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr  # the checkpoint file itself names the run too
    ckpt = tmp_path / CHECKPOINT_FILE
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path))
    assert_one_line_error(code, err, "cannot resume from", "not a safetensors file", "without --resume")


@pytest.mark.network
def test_a_fetch_killed_while_writing_leaves_the_previous_files_whole(tmp_path):
    raw = mnistfx.fetch_mnist(tmp_path, sources=("registry",))
    caught = 0
    for _ in range(3):
        left = set(raw.glob(".*.tmp"))  # from an earlier kill
        proc = subprocess.Popen(
            [MNISTFX, "data", "--root", str(tmp_path), "--source", "registry", "--force"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not set(raw.glob(".*.tmp")) - left:
            time.sleep(0.001)
        if proc.poll() is None:  # a temp file is being written: kill the writer now
            caught += 1
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        for path in raw.iterdir():
            if path.name in IDX_FILES:  # a file under its real name is always whole and right
                assert hashlib.sha256(path.read_bytes()).hexdigest() == IDX_FILES[path.name][0]
            else:  # anything else is a temp file no reader opens
                assert path.name.startswith(".") and path.name.endswith(".tmp")
    assert caught >= 2, "kills did not land while files were being written"
    mnistfx.verify_mnist(tmp_path)


def test_only_old_temp_files_are_removed(tmp_path):

    old, fresh = tmp_path / ".weights.safetensors.abc.tmp", tmp_path / ".history.json.def.tmp"
    for path in (old, fresh):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    mnistfx.prepare_run_dir(tmp_path)
    assert not old.exists() and fresh.exists()  # a fresh one may belong to a save still running


def test_a_checkpoint_whose_position_cannot_be_is_refused(mnist, tmp_path):
    import dataclasses

    mnistfx.train(_small(epochs=1, train_size=320), data=mnist, checkpoint_dir=tmp_path)
    ckpt = mnistfx.load_checkpoint(tmp_path)
    for bad in ({"step": 3}, {"epoch": 5}, {"history": []}):  # mid-epoch without an order; past the end; no history
        mnistfx.save_checkpoint(tmp_path / CHECKPOINT_FILE, dataclasses.replace(ckpt, **bad))
        with pytest.raises(mnistfx.WeightsError, match=r"does not fit its run \(position .*the file is damaged"):
            mnistfx.load_checkpoint(tmp_path)
        with pytest.raises(mnistfx.WeightsError, match="does not fit its run"):
            mnistfx.resume(tmp_path, data=mnist)


def test_train_refuses_to_overwrite_a_run(mnist, tmp_path):
    with pytest.raises(_Stop):  # interrupted right after its first checkpoint
        mnistfx.train(
            _small(train_size=320),
            data=mnist,
            checkpoint_dir=tmp_path,
            on_event=lambda kind, **info: _stop_after_first_epoch(kind),
        )
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    events = []
    with pytest.raises(mnistfx.RunFolderError, match="holds an unfinished run"):
        mnistfx.train(
            _small(train_size=320, seed=9),
            data=mnist,
            checkpoint_dir=tmp_path,
            on_event=lambda kind, **info: events.append(kind),
        )
    assert events == [] and (tmp_path / CHECKPOINT_FILE).read_bytes() == before  # refused before any work
    mnistfx.check_run_dir(tmp_path / "elsewhere")  # no run there: nothing to protect
    mnistfx.resume(tmp_path, data=mnist)
    with pytest.raises(mnistfx.RunFolderError, match="holds a finished run .*pass `overwrite=True`"):
        mnistfx.check_run_dir(tmp_path)  # finished now: its results are protected too
    mnistfx.check_run_dir(tmp_path, overwrite=True)


def _short_train_args(out):
    return [
        "train",
        "tuned",
        "--no-compile",
        "--epochs",
        "1",
        "--train-size",
        "640",
        "--val-size",
        "500",
        "--checkpoint-every",
        "2",
        "--out",
        str(out),
    ]


def test_a_full_disk_stops_with_one_line_and_a_whole_checkpoint(tmp_path):
    import resource

    def small_files():  # every file this process writes is cut off at 3 MB: a checkpoint does not fit
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))

    done = subprocess.run(
        [MNISTFX, *_short_train_args(tmp_path / "run")], capture_output=True, text=True, preexec_fn=small_files
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: cannot write the checkpoint") and line.endswith(
        "nothing of this run was saved: make room, then run the command again"
    )  # no checkpoint to resume from
    assert not (tmp_path / "run").exists()  # nothing half-written; the folder it made, left empty, is gone


def test_a_run_folder_another_process_writes_into_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import mnistfx, sys, time\n"
            "with mnistfx.run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(capsys, *_short_train_args(out))
        assert_one_line_error(code, err, "another mnistfx run is writing into", "pass another --out")
        assert list(out.iterdir()) == []
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert run_cli(capsys, *_short_train_args(out))[0] == 0  # the lock died with its process


def test_overwrite_replaces_a_finished_run(tmp_path, capsys):
    args = _short_train_args(tmp_path / "run")
    assert run_cli(capsys, *args)[0] == 0
    first = (tmp_path / "run" / "weights.safetensors").read_bytes()
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "holds a finished run", "--overwrite")
    assert run_cli(capsys, *args[:-2], "--seed", "1", *args[-2:], "--overwrite")[0] == 0
    assert (tmp_path / "run" / "weights.safetensors").read_bytes() != first


def test_an_overwriting_run_stopped_before_its_weights_are_written_can_be_finished(mnist, tmp_path):
    old = mnistfx.train(_small(train_size=320, epochs=1), data=mnist, checkpoint_dir=tmp_path)
    mnistfx.save_run(old, tmp_path)
    new = mnistfx.train(
        _small(train_size=320, epochs=1, seed=9), data=mnist, checkpoint_dir=tmp_path, overwrite=True
    )  # ... and stopped before save_run
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]  # not the old run's weights beside it
    again = mnistfx.resume(tmp_path, data=mnist, test=False)
    paths = mnistfx.save_run(again, tmp_path)
    assert _same_bits(mnistfx.load_model_weights(paths["weights"]).params, new.params)


def test_resume_takes_no_path_from_the_checkpoint(mnist, tmp_path, monkeypatch):
    import json

    from safetensors.torch import load_file, safe_open, save_file

    with pytest.raises(_Stop):
        mnistfx.train(
            _small(train_size=320),
            data=mnist,
            checkpoint_dir=tmp_path / "run",
            on_event=lambda kind, **info: _stop_after_first_epoch(kind),
        )
    path = tmp_path / "run" / CHECKPOINT_FILE
    with safe_open(path, "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    chosen = tmp_path / "chosen-by-the-file"
    meta["config"]["data_root"] = str(chosen)
    save_file(load_file(path), path, metadata={k: json.dumps(v) for k, v in meta.items()})
    monkeypatch.setenv("MNISTFX_DATA", str(mnist.root))
    run = mnistfx.resume(tmp_path / "run")  # MNIST from the default root, not from the file's path
    assert run.test.n == 10000 and not chosen.exists()
