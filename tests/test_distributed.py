"""Data-parallel training: processes on loopback (gloo), as torchrun or `mnistfx train --nproc` start them."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from dp_worker import one_step
from helpers import MNISTFX, same_bits
from safetensors.torch import load_file

import mnistfx

WORKER = str(Path(__file__).with_name("dp_worker.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(world, *args, timeout=240):
    """Run dp_worker.py ARGS as ``world`` ranks, as torchrun would; their (exit code, stderr)s."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env, text=True, stderr=subprocess.PIPE)
        )
    return [(p.wait(timeout=timeout), p.stderr.read()) for p in procs]


def test_one_data_parallel_step_is_the_single_process_step(mnist, tmp_path):
    for code, err in _ranks(2, "step", tmp_path):
        assert code == 0, err
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    assert same_bits(ranks[0], ranks[1])
    params, loss = one_step(None, mnist)  # the whole batch in this process
    for k, v in params.items():
        torch.testing.assert_close(ranks[0][k], v)  # float32 tolerance
    torch.testing.assert_close(ranks[0]["loss"][0], loss, rtol=1e-6, atol=1e-6)
    assert not torch.equal(params["fc1.weight"], mnistfx.get_model("tuned").init(0)["fc1.weight"])


def test_two_ranks_train_to_the_same_bits_and_a_stopped_run_resumes_bit_for_bit(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir(), cut.mkdir()
    for code, err in _ranks(2, "train", full):
        assert code == 0, err
    ranks = [load_file(full / f"rank{r}.safetensors") for r in range(2)]
    assert same_bits(ranks[0], ranks[1])  # parameters and state, on both ranks
    losses = [h["train_loss"] for h in json.loads((full / "history.json").read_text())]
    assert losses[1] < losses[0]

    # Stopping and resuming, eagerly (compiling in both ranks three times took two minutes of the suite).
    whole = tmp_path / "whole"
    whole.mkdir()
    for code, err in _ranks(2, "eager", whole):
        assert code == 0, err
    ranks = [load_file(whole / f"rank{r}.safetensors") for r in range(2)]
    assert same_bits(ranks[0], ranks[1])
    stopped = _ranks(2, "eager", cut, 8)  # rank 0 stops after its checkpoint at step 8; rank 1 loses it
    assert [code for code, _ in stopped] == [1, 1]
    assert "rank 1 lost the other processes" in stopped[1][1] and "Traceback" not in stopped[1][1]
    assert mnistfx.load_checkpoint(cut / "run").step == 8
    for code, err in _ranks(2, "resume", cut):
        assert code == 0, err
    assert same_bits(load_file(cut / "rank0.safetensors"), ranks[0])
    assert same_bits(load_file(cut / "rank1.safetensors"), ranks[0])


def _cli(*args, timeout=240):
    return subprocess.run([MNISTFX, *map(str, args)], capture_output=True, text=True, timeout=timeout)


SMALL = ("--epochs", "2", "--train-size", "640", "--val-size", "500", "--no-compile", "--no-test")
LONG = ("--epochs", "50", *SMALL[2:])  # a run that is still training when the test stops it


def test_nproc_trains_and_rank_0_alone_writes(tmp_path):
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("torchelastic_*")) | set(temp.glob("mnistfx-launch-*"))
    done = _cli("train", "tuned", "--nproc", "2", *SMALL, "--out", tmp_path / "run", "--json")
    assert done.returncode == 0, done.stderr
    assert set(temp.glob("torchelastic_*")) | set(temp.glob("mnistfx-launch-*")) == before  # no log folder left
    summary = json.loads(done.stdout)  # one JSON document: rank 0's
    assert summary["processes"] == 2 and summary["history"][1]["train_loss"] < summary["history"][0]["train_loss"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint.safetensors",
        "history.json",
        "weights.safetensors",
    ]
    assert set(os.listdir(tmp_path)) == {"run"}


def _cli_ranks(world, *args, extra=lambda rank: ()):
    """``python -m mnistfx ARGS`` (plus ``extra(rank)``) as ``world`` ranks, as torchrun starts them; their
    exit codes and stderr."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mnistfx", *map(str, args), *extra(r)],
            text=True,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env={
                **os.environ,
                "RANK": str(r),
                "WORLD_SIZE": str(world),
                "LOCAL_RANK": str(r),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": "1",
            },
        )
        for r in range(world)
    ]
    return [p.wait(timeout=240) for p in procs], [p.stderr.read() for p in procs]


def _each_rank_one_line(codes, errs, *fragments):
    for code, err in zip(codes, errs, strict=True):
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert any(fragment in err for err in errs), errs


def test_bad_data_parallel_inputs_stop_every_rank_with_one_line(tmp_path):
    # --nproc checks what it can before it starts any process: one line
    done = _cli("train", "tuned", "--nproc", "3", *SMALL, "--out", tmp_path / "a")
    assert done.returncode == 1 and done.stderr.startswith("error: 3 processes cannot share a batch of 32")
    assert done.stderr.count("\n") == 1
    done = _cli("train", "tuned", "--nproc", "2", "--ensemble", "2", *SMALL, "--out", tmp_path / "b")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "ensemble" in done.stderr
    # under torchrun each rank checks: one line each
    _each_rank_one_line(
        *_cli_ranks(3, "train", "tuned", *SMALL, "--out", tmp_path / "c"), "3 processes cannot share a batch of 32"
    )
    codes, errs = _cli_ranks(2, "train", "tuned", *SMALL, "--out", tmp_path / "c", extra=lambda r: ("--seed", str(r)))
    _each_rank_one_line(codes, errs, "rank 1 was given other settings than rank 0")
    assert not any((tmp_path / name).exists() for name in "abc")
    done = _cli("train", "tuned", *SMALL, "--out", tmp_path / "tuned")
    assert done.returncode == 0, done.stderr
    checkpoint = tmp_path / "tuned" / "checkpoint.safetensors"
    (tmp_path / "tuned" / "weights.safetensors").unlink()
    before = checkpoint.read_bytes()
    codes, errs = _cli_ranks(2, "train", "resnet", "--resume", tmp_path / "tuned")  # only rank 0 reads it
    _each_rank_one_line(codes, errs, "is a run of tuned, not resnet", "rank 0 stopped the run")
    done = _cli("train", "resnet", "--nproc", "2", "--resume", tmp_path / "tuned")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "is a run of tuned, not resnet" in done.stderr
    done = _cli("train", "--resume", tmp_path / "tuned", "--nproc", "3")  # its batch is the checkpoint's
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert done.stderr.endswith("resume it with a process count that divides 32\n")
    assert checkpoint.read_bytes() == before
    codes, errs = _cli_ranks(
        2,
        "train",
        extra=lambda r: ("--resume", tmp_path / "tuned") if r else ("tuned", *SMALL, "--out", tmp_path / "d"),
    )  # one rank resumes, one starts a run
    _each_rank_one_line(codes, errs, "rank 1 was given other work (a new run, or --resume) than rank 0")
    assert not (tmp_path / "d").exists()
    _each_rank_one_line(
        *_cli_ranks(2, "train", "tuned", *SMALL, "--out", tmp_path / "tuned"), "holds", "rank 0 stopped the run"
    )  # a folder that holds a run, seen by rank 0 alone
    done = _cli("train", "tuned", "--nproc", "2", *SMALL, "--out", tmp_path / "tuned")  # --nproc looks first
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "holds a finished run" in done.stderr
    assert checkpoint.read_bytes() == before


def _cmdline(pid) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children(parent):
    """The processes whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def test_a_rank_whose_peer_dies_stops_with_one_line(tmp_path):
    proc = subprocess.Popen(
        [
            MNISTFX,
            "train",
            "tuned",
            "--nproc",
            "2",
            *LONG,
            "--out",
            str(tmp_path / "run"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and time.monotonic() < deadline:  # the ranks are training
        time.sleep(0.2)
    workers = [pid for pid in _children(proc.pid) if b"-m\0mnistfx\0train" in _cmdline(pid)]
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)  # one rank dies without a word
    code = proc.wait(timeout=60)
    err = proc.stderr.read()
    assert code != 0 and "Traceback" not in err, err
    # rank 0 sees the closed connection, or the launcher stops it first: one line either way; the launcher
    # says for rank 1, which could not (unless rank 0's exit reached it first)
    lines = err.strip().splitlines()
    # rank 0 sees the closed connection and says so, or the launcher stops it first (quietly: the launcher
    # speaks for the run); the launcher says for rank 1, which could not
    assert 1 <= len(lines) <= 2 and all(line.startswith("error: rank ") for line in lines), err
    assert all(
        "rank 0 lost the other processes" in line or line == "error: rank 1 was killed (SIGKILL): the run stops"
        for line in lines
    ), err
    assert mnistfx.load_checkpoint(tmp_path / "run").epoch >= 1  # what was written is whole


def _rank0_cli(tmp_path, **env):
    """`mnistfx train` as rank 0 of 2, with torchrun's variables (``env`` overriding them)."""
    env = {
        **os.environ,
        "RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        **env,
    }
    return subprocess.Popen(
        [MNISTFX, "train", "tuned", "--no-compile", "--epochs", "1", "--out", str(tmp_path / "run")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_master_address_that_does_not_resolve_is_one_line_before_the_rendezvous(tmp_path):
    for name, value, message in (
        ("MASTER_ADDR", "lcalhost", "MASTER_ADDR 'lcalhost' is not an address"),
        ("MASTER_PORT", "29x00", "MASTER_PORT '29x00' is not a port number"),
    ):
        proc = _rank0_cli(tmp_path, **{name: value})
        code, err = proc.wait(timeout=120), proc.stderr.read()
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and message in lines[0] and "--master-addr" in lines[0], err
    assert not (tmp_path / "run").exists()


def test_sigterm_stops_a_rank_waiting_in_the_rendezvous_at_once(tmp_path):
    """Rank 0 alone waits in C++ for rank 1 (five minutes at most): SIGTERM still ends it in seconds, with one line."""
    port = _free_port()
    proc = _rank0_cli(tmp_path, MASTER_PORT=str(port))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # rank 0 listens for the others: it is in the rendezvous
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, err = proc.wait(timeout=60), proc.stderr.read()
    assert time.monotonic() - t0 < 30  # about 2 s; minutes if the signal waited for the C++ call to return
    assert code == 1 and err.strip().splitlines() == [
        "error: rank 0 was stopped (SIGTERM): the run stops; run the command again (no checkpoint was written yet)"
    ], err


def test_sigterm_to_the_launcher_is_one_line_that_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            MNISTFX,
            "train",
            "tuned",
            "--nproc",
            "2",
            *LONG,
            "--out",
            str(out),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not (out / "checkpoint.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    code, err = proc.wait(timeout=60), proc.stderr.read()
    assert code == 128 + signal.SIGTERM and err.strip().splitlines() == [
        f"error: the run was stopped (SIGTERM): continue it with `mnistfx train --resume {out}`"
    ], err
    assert mnistfx.load_checkpoint(out).epoch >= 1
