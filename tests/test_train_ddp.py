"""Two CPU processes with the gloo back end: DDP keeps parameters identical, ranks draw different tasks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from train.config import TrainConfig
from train.distributed import shutdown_distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from train.run import build_run, fit

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
