"""Faults that lose data: one fsmtl train per run folder, checkpoint checksums, stale temporaries.

Real locks, real files and real processes: a holder process flocks the run folder's lock file as
another fsmtl train would, and a process SIGKILLed inside ``atomic_write`` leaves a real temporary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsmtl.core.cli import run_stage_main
from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import CHECKSUM_KEY, tensor_checksum
from fsmtl.train import checkpoint as ck
from fsmtl.train.__main__ import main
from fsmtl.train.run import build_run, train
from fsmtl.train.runlog import read_metrics
from test_train_run import tiny_cfg, wrapped_loader

ROOT = Path(__file__).resolve().parents[1]
DAMAGED = "checkpoint is damaged (its tensors do not match the checksum saved with them)"

# flocks PATH as fsmtl train does (exclusive, pid inside), says so, then sleeps until killed
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.write(fd, b"%d\\n" % os.getpid())
print("locked", flush=True)
time.sleep(600)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _hold_lock(run: Path) -> subprocess.Popen:
    run.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run / ck.LOCK_NAME)], stdout=subprocess.PIPE,
                              text=True, env=_env())  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def _kill(holder: subprocess.Popen) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait()


def _snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``run`` but the lock: bytes and modification time."""
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != ck.LOCK_NAME}  # fmt: skip


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--model", "conv4", "--meta-batch-size", "2",
            "--epoch-length", "8", "--val-epoch-length", "4", "--test-queries", "5", "--max-epochs", "1",
            "--wandb", "disabled", "--no-progress", "--precision", "fp32", *extra]  # fmt: skip


# --- one owner per run folder ---------------------------------------------------------------------


def test_a_second_train_on_a_run_folder_in_use_fails_at_once_naming_the_holder_and_touches_nothing(
    tiny_shards: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    train(tiny_cfg(tiny_shards, out, max_epochs=1))
    leftover = out / "checkpoints" / ".last.pt.abcd1234.tmp"  # the holder's write in progress, for all we know
    leftover.write_bytes(b"half a checkpoint")
    before = _snapshot(out)
    holder = _hold_lock(out)
    capsys.readouterr()  # the first run's log
    try:
        wanted = f"fsmtl: error: {out}: another fsmtl train (pid {holder.pid}) is using this run folder\n"
        for argv in (_argv(tiny_shards, out), _argv(tiny_shards, out, "--overwrite", "--wandb", "offline"),
                     ["--resume", str(out), "--max-epochs", "2", "--no-progress"]):
            assert run_stage_main(main, argv) == 2, argv
            assert capsys.readouterr().err == wanted, argv
        with pytest.raises(FsmtlError, match=rf"another fsmtl train \(pid {holder.pid}\)"):
            build_run(tiny_cfg(tiny_shards, out, overwrite=True))
        assert _snapshot(out) == before and not (out / "wandb").exists()
    finally:
        _kill(holder)
    # the OS dropped the killed holder's lock: the same resume now runs (and clears the stale temporary)
    assert run_stage_main(main, ["--resume", str(out), "--max-epochs", "2", "--no-progress"]) == 0
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2] and not leftover.exists()


def test_the_command_line_refuses_a_folder_in_use_with_one_line_and_exit_code_2(
    tiny_shards: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        res = subprocess.run([sys.executable, "-m", "fsmtl.train", *_argv(tiny_shards, out)], capture_output=True,
                             text=True, env=_env(), cwd=ROOT, timeout=120)  # fmt: skip
        # a --resume of a run still in its first epoch (no last.pt yet) is told the same, not "not found"
        resumed = run_stage_main(main, ["--resume", str(out)])
    finally:
        _kill(holder)
    wanted = f"fsmtl: error: {out}: another fsmtl train (pid {holder.pid}) is using this run folder\n"
    assert res.returncode == 2 and res.stderr == wanted
    assert resumed == 2 and capsys.readouterr().err == wanted
    assert sorted(p.name for p in out.iterdir()) == [ck.LOCK_NAME]


def test_a_run_holds_its_folder_lock_while_it_trains_and_releases_it_when_done(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    refused: list[str] = []

    def second_train(n, fetch):  # inside the first run's training: another build_run on its folder
        if n == 2:
            with pytest.raises(FsmtlError) as e:
                build_run(tiny_cfg(tiny_shards, out, overwrite=True))
            refused.append(str(e.value))
        return fetch()

    train(tiny_cfg(tiny_shards, out, max_epochs=1), loader_factory=wrapped_loader(second_train))
    assert refused == [f"{out}: another fsmtl train (pid {os.getpid()}) is using this run folder"]
    assert (out / ck.LOCK_NAME).read_text() == f"{os.getpid()}\n"
    # released when the run ended: a process that is not this one can take it now
    probe = "import fcntl, os, sys; fcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB)"
    assert subprocess.run([sys.executable, "-c", probe, str(out / ck.LOCK_NAME)]).returncode == 0


def test_a_run_that_fails_to_start_releases_the_lock(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(FsmtlError, match="nope: not found"):
        train(tiny_cfg(tmp_path / "nope", out))
    train(tiny_cfg(tiny_shards, out, max_epochs=1))  # the failed start left the folder free
    assert [r["epoch"] for r in read_metrics(out)] == [1]


def test_the_lock_file_is_not_a_previous_run_and_overwrite_keeps_it(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / ck.LOCK_NAME).write_text("12345\n")  # left by a run that died before writing anything
    assert ck.previous_run_files(out) == []
    train(tiny_cfg(tiny_shards, out, max_epochs=1))  # a fresh run: no --overwrite needed
    lock = out / ck.LOCK_NAME
    inode = lock.stat().st_ino
    train(tiny_cfg(tiny_shards, out, max_epochs=1, overwrite=True))
    assert lock.stat().st_ino == inode  # the same file: never deleted, so never two lock files at once


# --- checkpoint checksums -------------------------------------------------------------------------


def _state() -> dict:
    return {"model_name": "conv4", "model_kwargs": {}, "config": {},
            "data_meta": {"mean": [0.5], "std": [0.5], "image_shape": [32, 32, 3]},
            "model": {"w": torch.arange(4096, dtype=torch.float32) + 0.5, "b": torch.zeros(3, dtype=torch.bfloat16)},
            "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2, 2)}}, "param_groups": [{"lr": 0.1}]},
            "rng": {"torch": torch.get_rng_state(), "ranks": [{"x": torch.tensor(7)}]}, "epoch": 1}  # fmt: skip


def test_a_checkpoint_with_one_flipped_byte_in_a_tensor_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    ck.save_checkpoint(path, _state())
    assert torch.equal(ck.load_checkpoint(path)["model"]["w"], _state()["model"]["w"])  # undamaged: loads
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find((torch.arange(4096, dtype=torch.float32) + 0.5).numpy().tobytes())
    assert at > 0  # the tensor's storage, stored uncompressed in the zip
    raw[at + 4 * 1000 + 2] ^= 0x10  # one bit of element 1000: torch itself loads this without a word
    path.write_bytes(bytes(raw))
    assert torch.load(path, weights_only=True)["model"]["w"][1000] != 1000.5
    with pytest.raises(FsmtlError) as e:
        ck.load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: {DAMAGED}; ") and "\n" not in str(e.value)


def test_a_tensor_changed_and_saved_back_with_the_old_checksum_is_refused_by_train_and_eval(
    tiny_shards: Path, tmp_path: Path
) -> None:
    from fsmtl.eval.run import load_run

    out = tmp_path / "run"
    train(tiny_cfg(tiny_shards, out, max_epochs=1))
    best = out / "checkpoints" / "best.pt"
    c = torch.load(best, weights_only=True)
    assert isinstance(c[CHECKSUM_KEY], str)
    name = next(iter(c["model"]))
    c["model"][name][(0,) * c["model"][name].dim()] += 1.0  # one value; the checksum is the old one
    torch.save(c, best)
    for load in (ck.load_checkpoint, lambda p: load_run(out, device="cpu")):
        with pytest.raises(FsmtlError, match=f"^{best}: {DAMAGED.replace('(', '[(]').replace(')', '[)]')}; "):
            load(best)
    assert ck.load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1  # the other one is intact


def test_a_checkpoint_written_before_checksums_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    old = {"format": ck.FORMAT, "version": ck.VERSION, **_state()}
    torch.save(old, path)  # as fsmtl wrote them before: no "checksum" key
    got = ck.load_checkpoint(path)  # eval reads through it too (train.checkpoint: the one format module)
    assert got["epoch"] == 1 and torch.equal(got["model"]["w"], old["model"]["w"])


def test_the_checksum_follows_the_tensors_not_the_order_the_dicts_were_built_in() -> None:
    state = _state()
    same = {"epoch": 2, "rng": state["rng"], "optimizer": state["optimizer"],
            "model": {"b": state["model"]["b"].clone(), "w": state["model"]["w"].clone()}}  # fmt: skip
    assert tensor_checksum(state) == tensor_checksum(same)  # order and plain values do not count
    as_int = {**state, "model": {**state["model"], "w": state["model"]["w"].view(torch.int32)}}
    reshaped = {**state, "model": {**state["model"], "w": state["model"]["w"].view(64, 64)}}
    moved = {**state, "model": {"v": state["model"]["w"], "b": state["model"]["b"]}}
    noncontiguous = {**state, "model": {**state["model"], "w": state["model"]["w"].view(64, 64).t()}}
    sums = {tensor_checksum(s) for s in (state, as_int, reshaped, moved, noncontiguous)}
    assert len(sums) == 5  # the same bytes under another dtype, shape or key, or in another order, differ


# --- stale temporaries ----------------------------------------------------------------------------


def _killed_mid_write(target: Path) -> None:
    """A process SIGKILLed inside fsmtl's atomic_write of ``target``: what it leaves behind is real."""
    code = ("import os, signal, sys; from fsmtl.core.fileio import atomic_write; "
            "atomic_write(sys.argv[1], lambda f: (f.write(b'x' * 4096), f.flush(), os.kill(os.getpid(), signal.SIGKILL)))")
    res = subprocess.run([sys.executable, "-c", code, str(target)], env=_env())
    assert res.returncode == -signal.SIGKILL and not target.exists()


def test_a_run_start_removes_temporaries_of_killed_writes_and_keeps_every_other_file(
    tiny_shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    for target in (out / "metrics.jsonl", out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"):
        _killed_mid_write(target)
    left = sorted(p.relative_to(out) for p in out.rglob("*.tmp"))
    assert len(left) == 3, left
    kept = [out / "notes.txt", out / "checkpoints" / ".last.pt.tmp", out / ".notes.txt.abcd1234.tmp",
            out / "checkpoints" / ".last.pt.abcd1234.tmp.bak", out / "reports" / ".eval_test_best.json.abcd1234.tmp"]
    for p in kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("keep")
    train(tiny_cfg(tiny_shards, out, max_steps=1))
    assert not [p for p in left if (out / p).exists()]
    assert all(p.read_text() == "keep" for p in kept)
    assert (out / "checkpoints" / "last.pt").is_file()


# --- SIGKILL inside a checkpoint write ------------------------------------------------------------

# Saves last.pt (epoch 2, over the parent's epoch 1) and SIGKILLs itself at one point of the write:
# after mkstemp, part-way through the bytes, before fsync, before the rename, after the rename; or
# ("loop") saves epochs 2, 3, ... until the parent kills it at a random time.
KILLER = """
import io, os, signal, sys
import torch
from fsmtl.train import checkpoint as ck
path, point = sys.argv[1], sys.argv[2]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
def state(epoch):
    return {"model_name": "conv4", "model_kwargs": {}, "config": {}, "epoch": epoch,
            "data_meta": {"mean": [0.5], "std": [0.5], "image_shape": [8, 8, 1]},
            "model": {"w": torch.full((1 << 20,), float(epoch))}, "rng": {"ranks": []}}
if point == "mkstemp":
    real = os.fdopen
    os.fdopen = lambda *a, **k: die()
elif point == "write":
    real = os.fdopen
    class Half:
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *a): return False
        def write(self, b):
            self.f.write(bytes(b)[: len(b) // 2]); self.f.flush(); die()
        def __getattr__(self, name): return getattr(self.f, name)
    os.fdopen = lambda *a, **k: Half(real(*a, **k))
elif point == "fsync":
    os.fsync = die
elif point == "replace":
    os.replace = die
elif point == "after":
    real = os.replace
    os.replace = lambda *a: (real(*a), die())
if point == "loop":
    print("ready", flush=True)
    for epoch in range(2, 10**6):
        ck.save_checkpoint(path, state(epoch))
else:
    ck.save_checkpoint(path, state(2))
"""


@pytest.mark.parametrize("point,epoch_after", [("mkstemp", 1), ("write", 1), ("fsync", 1), ("replace", 1), ("after", 2)])
def test_a_checkpoint_write_killed_at_any_point_leaves_the_old_or_the_new_checkpoint_whole(
    tmp_path: Path, point: str, epoch_after: int
) -> None:
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    ck.save_checkpoint(last, {**_state(), "epoch": 1})
    res = subprocess.run([sys.executable, "-c", KILLER, str(last), point], env=_env())
    assert res.returncode == -signal.SIGKILL
    assert ck.load_checkpoint(last)["epoch"] == epoch_after  # whole, checksum and all: never a mix
    temps = list(last.parent.glob(".last.pt.*.tmp"))
    assert len(temps) == (0 if point == "after" else 1)  # what a real kill leaves
    assert ck.remove_run_temporaries(run) == temps and not list(last.parent.glob("*.tmp"))
    assert ck.load_checkpoint(last)["epoch"] == epoch_after


def test_checkpoint_writes_killed_at_random_times_always_leave_a_whole_checkpoint(tmp_path: Path) -> None:
    import random
    import time

    rng = random.Random(16)
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    ck.save_checkpoint(last, {**_state(), "epoch": 1})
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", KILLER, str(last), "loop"], stdout=subprocess.PIPE, text=True, env=_env())
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.5))  # somewhere in a stream of 4 MB saves: often inside one
        _kill(proc)
        assert ck.load_checkpoint(last)["epoch"] >= 1  # loads, its checksum verified
        assert len(ck.remove_run_temporaries(run)) <= 1 and not list(last.parent.glob("*.tmp"))


# --- a checkpoint from another run ----------------------------------------------------------------


def test_resume_refuses_a_last_pt_copied_from_another_run_but_resumes_a_copied_run_folder(
    tiny_shards: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    train(tiny_cfg(tiny_shards, a, max_epochs=1))
    train(tiny_cfg(tiny_shards, b, max_epochs=1))
    ids = [json.loads((r / "config.json").read_text())["run_id"] for r in (a, b)]
    assert ids[0] != ids[1] and ck.load_checkpoint(a / "checkpoints" / "last.pt")["run_id"] == ids[0]
    shutil.copy(a / "checkpoints" / "last.pt", b / "checkpoints" / "last.pt")
    before = _snapshot(b)
    with pytest.raises(FsmtlError, match=f"last.pt: belongs to run {ids[0]}, but .*config.json records run {ids[1]}"):
        train(tiny_cfg(tiny_shards, b, resume=str(b), max_epochs=2))
    assert _snapshot(b) == before  # b's history untouched
    shutil.copytree(a, tmp_path / "branch")  # a whole run folder copied: a branch, resumable
    train(tiny_cfg(tiny_shards, tmp_path / "branch", resume=str(tmp_path / "branch"), max_epochs=2))
    assert ck.load_checkpoint(tmp_path / "branch" / "checkpoints" / "last.pt")["run_id"] == ids[0]
    assert [r["epoch"] for r in read_metrics(tmp_path / "branch")] == [1, 2]
