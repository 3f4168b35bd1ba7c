"""Two CPU processes with the gloo back end: DDP keeps parameters identical, ranks draw different tasks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from fsmtl.train.config import TrainConfig
from fsmtl.train.distributed import shutdown_distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from fsmtl.train.run import build_run, fit

    cfg = TrainConfig(data=data, out=out, model="conv4", meta_batch_size=1, epoch_length=6, val_epoch_length=4,
                      test_queries=5, max_epochs=1, wandb="disabled", progress=False, log_every=1, precision="fp32")
    try:
        run = build_run(cfg)
        first = next(run.loader)  # the first batch this rank would train on
        run.loader.load_state_dict({**run.loader.state_dict(), "batches": 0,
                                    "generator": torch.Generator().manual_seed(run.loader.cfg.seed).get_state()})
        fit(run)
        params = {k: v.detach() for k, v in run.net.named_parameters()}
        torch.save({"net": params, "classes": first.global_class}, Path(out) / f"rank{rank}.pt")
    finally:
        shutdown_distributed()


def test_two_gloo_ranks_keep_identical_parameters_and_sample_different_tasks(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(tiny_shards), str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # parameters, not BatchNorm running stats: DDP re-broadcasts rank 0's buffers before each forward,
    # so after the last step each rank holds its own (only rank 0's are checkpointed)
    assert r0["net"].keys() == r1["net"].keys() and "heads" in r0["net"]
    for k in r0["net"]:
        assert torch.equal(r0["net"][k], r1["net"][k]), k
    assert not torch.equal(r0["classes"], r1["classes"])
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["rng"]["ranks"]) == 2 and ckpt["step"] == 3
    assert (out / "metrics.jsonl").read_text().count("\n") == 1  # only rank 0 logs


def _one_rank(rank: int, port: int, data: str, out: str, launched: bool) -> None:
    # launched: the variables torchrun sets for --nproc_per_node 1; else a plain run
    if launched:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import contextlib
    import io

    from torch.nn.parallel import DistributedDataParallel

    from fsmtl.train.run import build_run, fit

    cfg = TrainConfig(data=data, out=out, model="conv4", meta_batch_size=2, epoch_length=8, val_epoch_length=4,
                      test_queries=5, max_epochs=1, wandb="disabled", progress=False, precision="fp32")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            run = build_run(cfg)
            fit(run)
        wrapped = isinstance(run.tools.net, DistributedDataParallel)
        params = {k: v.detach() for k, v in run.net.named_parameters()}
        torch.save({"net": params, "ddp": wrapped, "log": err.getvalue()}, Path(out) / "result.pt")
    finally:
        shutdown_distributed()


def test_a_one_rank_torchrun_trains_under_ddp_exactly_as_a_plain_run(tiny_shards: Path, tmp_path: Path) -> None:
    # torchrun --nproc_per_node 1 joins a process group (gloo here, NCCL on a GPU) and wraps the
    # model in DDP: the multi-GPU code path on one device, with the plain run's result
    res = {}
    for launched in (True, False):
        out = tmp_path / ("torchrun" if launched else "plain")
        out.mkdir()
        mp.spawn(_one_rank, args=(_free_port(), str(tiny_shards), str(out), launched), nprocs=1, join=True)
        res[launched] = torch.load(out / "result.pt", weights_only=True)
    assert res[True]["ddp"] and not res[False]["ddp"]
    assert "ranks 1 (DDP over gloo)" in res[True]["log"] and "DDP" not in res[False]["log"]
    for k, v in res[False]["net"].items():
        assert torch.equal(res[True]["net"][k], v), k
