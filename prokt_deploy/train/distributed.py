"""torch.distributed support: DistributedDataParallel over ranks started by torchrun.

``prokt-deploy distill --nproc-per-node N`` re-launches itself under
``python -m torch.distributed.run --standalone``; for several machines run torchrun yourself on
each node (see docs/cli.md, "Long runs"). Every rank loads the data and plans the student (same seed, same
result); each rank trains on its shard of every global batch (the recipe's ``batch_size`` is the
global batch), gradients are averaged by DDP, epoch metrics are summed across ranks, and only
rank 0 writes the run directory. Backend: gloo on CPU, NCCL on CUDA. Batch-norm statistics
stay per rank (no SyncBatchNorm), so a DDP run is close to, not identical with, a 1-process run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as dist
from torch import nn


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def backend() -> str | None:
    return dist.get_backend() if active() else None


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun set up (env://); returns this rank's device."""
    if not launched_by_torchrun() or (dist.is_initialized()):
        return device
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP-wrap a model that is being trained (identity when not distributed)."""
    if not active():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard(idx: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch of indices."""
    return idx[rank() :: world_size()] if active() else idx


def sum_metrics(sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
    """Sum per-rank metric totals and sample counts over all ranks."""
    if not active():
        return sums, count
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: t[i].item() for i, k in enumerate(keys)}, int(t[-1].item())


def all_ok(ok: bool) -> bool:
    """True only if every rank says ok (used so that one rank's failure stops all of them)."""
    if not active():
        return ok
    t = torch.tensor([0 if ok else 1])
    dist.all_reduce(t)
    return t.item() == 0


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m prokt_deploy <argv>`` under torchrun with ``nproc`` local processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "prokt_deploy", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    return subprocess.call(cmd, env=env)
