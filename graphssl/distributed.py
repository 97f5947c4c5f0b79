"""Processes: launching through torchrun, joining the process group, rank-0 duties.

``graphssl run PIPELINE --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT]``
re-launches itself through ``torch.distributed.run`` (torchrun); ``torchrun -m
graphssl run ...`` works the same. gloo on CPU, NCCL on GPU. Only rank 0 talks
to MLflow and writes checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def setup(device_name: str) -> tuple[World, torch.device]:
    """Join the process group when launched by torchrun; pick this process's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    world = World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{world.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return world, device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value: Any, world: World) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank if it is True on any (a stop request must be collective)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def parameter_checksums(module: torch.nn.Module, world: World) -> list[float]:
    """One checksum of all parameters per rank (equal when the ranks are in sync)."""
    with torch.no_grad():
        total = sum(float(p.double().sum()) + float(p.double().abs().sum()) for p in module.parameters())
    if not world.distributed:
        return [total]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, total)
    return out


def launch(argv_after_launcher: list[str], nproc_per_node: int, nnodes: int = 1, rdzv_endpoint: str | None = None,
           node_rank: int | None = None) -> int:
    """Run ``python -m graphssl ARGS`` in N x M processes through torchrun."""
    from torch.distributed.run import main as torchrun

    # torchrun sets 1 thread per process otherwise (and says so): share this machine's cores instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))

    args = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}"]
    if rdzv_endpoint:
        args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
        if node_rank is not None:
            args.append(f"--node-rank={node_rank}")
    else:
        args.append("--standalone")
    torchrun(args + ["-m", "graphssl", *argv_after_launcher])
    return 0
