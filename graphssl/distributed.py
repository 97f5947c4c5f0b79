"""Processes: launching through torchrun, joining the process group, rank-0 duties.

``graphssl run PIPELINE --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT]``
re-launches itself through ``torch.distributed.run`` (torchrun); ``torchrun -m
graphssl run ...`` works the same. gloo on CPU, NCCL on GPU. Only rank 0 talks
to MLflow and writes checkpoints.

Two process groups: the default one (NCCL on GPU: DDP, FSDP and the
components' statistics, all on device tensors) and a gloo side group for
everything this module does on the CPU: stop flags, objects (run ids, RNG
states, checksums) and the barriers where ranks wait for rank 0 (evaluation,
saving), which get a long timeout so that a long evaluation on rank 0 does not
trip the other ranks' collective timeout. No CPU tensor ever reaches NCCL.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
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


# How long ranks wait for rank 0 at a barrier (an evaluation of a large bank, a checkpoint upload).
WAIT_TIMEOUT = timedelta(hours=int(os.environ.get("GRAPHSSL_WAIT_HOURS", "6")))
_cpu_group = None  # the gloo side group (None: not distributed)


def setup(device_name: str) -> tuple[World, torch.device]:
    """Join the process group when launched by torchrun; pick this process's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    world = World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{world.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world.distributed and not dist.is_initialized():
        join("nccl" if use_cuda else "gloo", device if use_cuda else None)
    return world, device


def join(backend: str, device: torch.device | None = None, **init_kwargs: Any) -> None:
    """Initialise the default group (``backend``) and the gloo side group with the long timeout."""
    global _cpu_group
    if device is not None:
        init_kwargs.setdefault("device_id", device)
    dist.init_process_group(backend, **init_kwargs)
    _cpu_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)


def cpu_group():
    """The gloo group for CPU-side collectives (the default group if none was made, e.g. by a foreign launcher)."""
    return _cpu_group


def teardown() -> None:
    global _cpu_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _cpu_group = None


def broadcast(value: Any, world: World) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=cpu_group())
    return box[0]


def barrier(world: World) -> None:
    """Wait for every rank, however long rank 0 takes (evaluation, saving): the side group's long timeout."""
    if world.distributed:
        dist.barrier(group=cpu_group())


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank if it is True on any (a stop request must be collective)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=cpu_group())
    return bool(t.item())


def all_gather_objects(value: Any, world: World) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order."""
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value, group=cpu_group())
    return out


def parameter_checksums(module: torch.nn.Module, world: World) -> list[float]:
    """One checksum of all parameters per rank (equal when the ranks are in sync)."""
    with torch.no_grad():
        total = sum(float(p.double().sum()) + float(p.double().abs().sum()) for p in module.parameters())
    return all_gather_objects(total, world)


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
