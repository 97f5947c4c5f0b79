"""Every collective of graphssl.distributed works under NCCL: no CPU tensor reaches the default group.

No GPU here, so two gloo processes stand in: the default group is made to
refuse CPU tensors (and barriers, which must wait with the side group's long
timeout) as an NCCL-only group would; graphssl's collectives must still work.
"""
from __future__ import annotations

import inspect
import multiprocessing as mp
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

REFUSING = ("all_reduce", "broadcast", "all_gather", "gather", "scatter", "reduce", "all_to_all", "barrier",
            "all_gather_into_tensor", "reduce_scatter_tensor", "reduce_scatter")


def refuse_cpu_on_default_group(monkeypatch_like: dict) -> None:
    """Wrap c10d's collectives: on the default group, a CPU tensor (or a barrier) raises, as NCCL refuses CPU tensors."""
    for name in REFUSING:
        original = getattr(c10d, name)
        signature = inspect.signature(original)

        def strict(*args, __original=original, __signature=signature, __name=name, **kwargs):
            bound = __signature.bind_partial(*args, **kwargs).arguments
            group = bound.get("group")
            if group is None or group is c10d.GroupMember.WORLD:
                tensors = [v for v in bound.values() if isinstance(v, torch.Tensor)]
                tensors += [t for v in bound.values() if isinstance(v, list) for t in v if isinstance(t, torch.Tensor)]
                if __name == "barrier" or any(t.device.type == "cpu" for t in tensors):
                    raise RuntimeError(f"NCCL-only default group: {__name} got a CPU tensor")
            return __original(*args, **kwargs)

        monkeypatch_like[name] = original
        setattr(c10d, name, strict)
        setattr(dist, name, strict)


def worker(rank: int, store: str, results) -> None:
    try:
        from graphssl import checkpoint, distributed
        from graphssl.distributed import World

        distributed.join("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
        refuse_cpu_on_default_group({})
        world = World(rank, 2, rank)
        # the stand-in refuses what NCCL refuses: a plain CPU all-reduce on the default group fails
        try:
            dist.all_reduce(torch.zeros(1))
            refused = False
        except RuntimeError:
            refused = True
        got = {
            "refused": refused,
            "any_rank": distributed.any_rank(rank == 1, world),
            "broadcast": distributed.broadcast(f"from {rank}", world),
            "gather": distributed.all_gather_objects(rank * 10, world),
            "checksums": len(distributed.parameter_checksums(torch.nn.Linear(2, 2), world)),
            "rng": len(checkpoint.gathered_rng(world)),
        }
        distributed.barrier(world)
        results.put((rank, got))
        distributed.teardown()
    except Exception:
        results.put((rank, traceback.format_exc()))


def test_collectives_never_send_cpu_tensors_to_the_default_group(tmp_path):
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, str(tmp_path / "store"), results)) for r in range(2)]
    for p in procs:
        p.start()
    out = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank, got in out.items():
        assert isinstance(got, dict), f"rank {rank} failed:\n{got}"
        assert got["refused"]  # the check can fail
        assert got["any_rank"] is True
        assert got["broadcast"] == "from 0"
        assert got["gather"] == [0, 10]
        assert got["checksums"] == 2 and got["rng"] == 2


def test_setup_on_cuda_joins_nccl_with_the_device_and_a_gloo_side_group(monkeypatch):
    from graphssl import distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", str(device))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend, str(kw.get("device_id")))))
    monkeypatch.setattr(dist, "new_group", lambda **kw: calls.append(("new_group", kw["backend"], kw["timeout"])) or "side")
    world, device = distributed.setup("auto")
    assert str(device) == "cuda:1" and world.rank == 1
    assert calls[0] == ("set_device", "cuda:1")
    assert calls[1] == ("init", "nccl", "cuda:1")
    assert calls[2][:2] == ("new_group", "gloo") and calls[2][2] >= distributed.WAIT_TIMEOUT
    assert distributed.cpu_group() == "side"
    monkeypatch.setattr(distributed, "_cpu_group", None)


def test_no_collective_outside_the_audited_modules():
    """Every torch.distributed collective in graphssl's code is in a module this file (or the device-tensor ops) covers."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    pattern = re.compile(r"\bdist\.(all_reduce|broadcast|all_gather|barrier|all_gather_object|broadcast_object_list|"
                         r"reduce_scatter|gather|scatter)\(")
    files = [p for folder in ("graphssl", "components") for p in (root / folder).rglob("*.py") if not p.is_symlink()
             and "graphssl/components" not in str(p)]
    found = {str(p.relative_to(root)) for p in files if pattern.search(p.read_text())}
    # distributed.py: the side group; ops/distributed.py and vqvae.py: model statistics on device tensors
    assert found <= {"graphssl/distributed.py", "graphssl/ops/distributed.py", "components/tokenizer/vqvae.py"}, found
