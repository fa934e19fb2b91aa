"""Rank bodies for the torch.distributed backend tests (module level, so spawned processes import them).

Each sets the ``NETAGG_*`` variables it is given, imports host_agent (which registers the backend) and
calls ``dist.init_process_group`` as a user would; ``env=None`` runs the same body over gloo.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from netagg.verify import inputs

DTYPES = ("float32", "bfloat16", "float16", "int32")


def init(rank: int, world: int, port: int, env: dict[str, str] | None) -> Any:
    """``init_process_group("netagg")`` with ``env`` in the environment, or gloo without."""
    import warnings

    import torch

    # torch 2.13 calls all_gather_into_tensor and reduce_scatter_tensor deprecated (for *_single):
    # the tests use the names users know.
    warnings.filterwarnings("ignore", "`torch.distributed.*` is deprecated", FutureWarning)
    torch.set_num_threads(1)
    for name in [k for k in os.environ if k.startswith("NETAGG_")]:
        del os.environ[name]
    os.environ.update(env or {})
    import torch.distributed as dist

    import host_agent  # noqa: F401  (registers the backend)

    backend = "gloo" if env is None else "netagg"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    return dist


def rank_input(rank: int, size: int, dtype: str, seed: int = 0) -> Any:
    """Rank ``rank``'s tensor of ``dtype``: netagg.verify's inputs, rounded to the dtype."""
    import torch

    base = inputs(rank, (size,), "int32" if dtype == "int32" else "float32", seed)
    return torch.from_numpy(base).to(getattr(torch, dtype))


def as_numpy(t: Any) -> np.ndarray:
    """A tensor's values as float32 (bfloat16, float16: exactly) or int32."""
    import torch

    return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy().copy()


def collectives(rank: int, world: int, port: int, env: dict[str, str], shard: int) -> dict[str, Any]:
    """Every switch collective in every dtype on tensors of ``world * shard`` elements; what came out,
    the worker's traffic around one reduce-scatter and one all-gather, and the group's stats."""
    import torch

    dist = init(rank, world, port, env)
    pg = dist.group.WORLD
    size = world * shard
    out: dict[str, Any] = {"elements": pg.worker.elements, "group": type(pg).__name__}
    try:
        for dtype in DTYPES:
            x = rank_input(rank, size, dtype)
            got: dict[str, Any] = {}
            ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
            if dtype != "int32":
                ops["avg"] = dist.ReduceOp.AVG
            for name, op in ops.items():
                t = x.clone()
                dist.all_reduce(t, op=op)
                got[name] = as_numpy(t)
            t = x.clone()
            work = dist.all_reduce(t, async_op=True)  # a Work whose future holds the tensor
            (value,) = work.get_future().wait()
            got["async_same_tensor"] = bool(value.data_ptr() == t.data_ptr())
            got["async_sum"] = as_numpy(t)
            shard_out = torch.empty(shard, dtype=x.dtype)
            before = dict(pg.stats()["traffic"])
            dist.reduce_scatter_tensor(shard_out, x)
            got["rs_traffic"] = _delta(before, pg.stats()["traffic"])
            got["rs"] = as_numpy(shard_out)
            gathered = torch.empty(size, dtype=x.dtype)
            mine = x[rank * shard : (rank + 1) * shard].clone()
            before = dict(pg.stats()["traffic"])
            dist.all_gather_into_tensor(gathered, mine)
            got["ag_traffic"] = _delta(before, pg.stats()["traffic"])
            got["ag"] = as_numpy(gathered)
            parts = [torch.empty(shard, dtype=x.dtype) for _ in range(world)]
            dist.all_gather(parts, mine)  # list outputs
            got["ag_list"] = as_numpy(torch.cat(parts))
            rs_list = torch.empty(shard, dtype=x.dtype)
            dist.reduce_scatter(rs_list, list(x.chunk(world)))  # list inputs
            got["rs_list"] = as_numpy(rs_list)
            b = x.clone()
            dist.broadcast(b, src=world - 1)
            got["bc"] = as_numpy(b)
            dist.barrier()
            out[dtype] = got
        out["stats"] = pg.stats()
        return out
    finally:
        dist.destroy_process_group()


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in ("bytes_sent", "bytes_received", "retransmissions")}


def fallbacks(rank: int, world: int, port: int, env: dict[str, str]) -> dict[str, Any]:
    """Collectives the switch cannot do: they go through gloo, correct, and counted."""
    import torch

    dist = init(rank, world, port, env)
    pg = dist.group.WORLD
    try:
        out: dict[str, Any] = {}
        a2a = torch.empty(world)
        dist.all_to_all_single(a2a, torch.arange(world, dtype=torch.float32) + 10 * rank)
        out["all_to_all"] = a2a.numpy().copy()
        prod = torch.full((5,), float(rank + 2))
        dist.all_reduce(prod, op=dist.ReduceOp.PRODUCT)
        out["product"] = prod.numpy().copy()
        wide = torch.full((5,), 0.1 * (rank + 1), dtype=torch.float64)
        dist.all_reduce(wide)
        out["float64_sum"] = wide.numpy().copy()
        if rank == 0:
            dist.send(torch.full((3,), 7.0), dst=1)
        elif rank == 1:
            got = torch.empty(3)
            dist.recv(got, src=0)
            out["recv"] = got.numpy().copy()
        gathered = [torch.empty(2) for _ in range(world)] if rank == 0 else None
        dist.gather(torch.full((2,), float(rank)), gathered, dst=0)
        if gathered is not None:
            out["gather"] = torch.cat(gathered).numpy().copy()
        t = torch.ones(4)
        dist.all_reduce(t)  # back through the switch
        out["after"] = t.numpy().copy()
        out["stats"] = pg.stats()
        sub = dist.new_group(backend="netagg")  # a second netagg group: gloo only
        t = torch.ones(3)
        dist.all_reduce(t, group=sub)
        out["subgroup"] = (t.numpy().copy(), sub.stats())
        return out
    finally:
        dist.destroy_process_group()


def odd_shapes(rank: int, world: int, port: int, env: dict[str, str]) -> dict[str, Any]:
    """Non-contiguous tensors (written back), coalesced collectives (torch's coalescing manager), and
    the group a DeviceMesh over the world uses."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh

    dist = init(rank, world, port, env)
    pg = dist.group.WORLD
    try:
        out: dict[str, Any] = {}
        grid = torch.arange(12, dtype=torch.float32).reshape(3, 4) * (rank + 1)
        column = grid[:, 1]  # a strided view
        dist.all_reduce(column, op=dist.ReduceOp.MAX)
        out["column"] = grid.numpy().copy()
        row_major = torch.full((4, 3), float(rank)).t()  # non-contiguous, all of it
        dist.broadcast(row_major, src=1)
        out["transposed"] = row_major.numpy().copy()
        ins = [torch.full((2,), float(rank)), torch.full((3,), 10.0 + rank)]
        outs = [torch.empty(2 * world), torch.empty(3 * world)]
        with dist._coalescing_manager(group=pg, async_ops=True) as cm:
            for o, i in zip(outs, ins, strict=True):
                dist.all_gather_into_tensor(o, i)
        cm.wait()
        out["coalesced_gather"] = [o.numpy().copy() for o in outs]
        rs_in = [torch.arange(2.0 * world) + rank, torch.arange(4.0 * world, dtype=torch.float32)]
        rs_out = [torch.empty(2), torch.empty(4)]
        with dist._coalescing_manager(group=pg, async_ops=True) as cm:
            for o, i in zip(rs_out, rs_in, strict=True):
                dist.reduce_scatter_tensor(o, i)
        cm.wait()
        out["coalesced_rs"] = [o.numpy().copy() for o in rs_out]
        mesh = init_device_mesh("cpu", (world,))
        out["mesh_group"] = (mesh.get_group().group_name, pg.group_name)
        out["stats"] = pg.stats()
        return out
    finally:
        dist.destroy_process_group()


# -- training -------------------------------------------------------------------------------------
def _mlp(seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(32, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )


def _batch(rank: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(rank)
    return torch.randn(16, 32, generator=g), torch.randint(0, 10, (16,), generator=g)


def train(
    rank: int, world: int, port: int, env: dict[str, str] | None, kind: str, steps: int
) -> dict[str, Any]:
    """``steps`` steps of SGD on every rank's own batch, the model wrapped by ``kind``: "ddp" (no
    hook), "fsdp2" (fully_shard per layer, bf16 parameters, float32 gradient reduction), "fsdp1"
    (FullyShardedDataParallel) or "zero" (DDP with ZeroRedundancyOptimizer). The losses (averaged
    over ranks, via the group), and the group's stats."""
    import torch
    from torch.nn.functional import cross_entropy

    dist = init(rank, world, port, env)
    try:
        model = _mlp(0)
        if kind == "fsdp2":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, mp_policy=policy)
            fully_shard(model, mp_policy=policy)
            opt: Any = torch.optim.SGD(model.parameters(), lr=0.2)
        elif kind == "fsdp1":  # torch 2.13's FSDP1 runs on a CPU-only machine with device_id=cpu
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            model = FSDP(model, device_id=torch.device("cpu"))
            opt = torch.optim.SGD(model.parameters(), lr=0.2)
        else:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model)
            if kind == "zero":
                from torch.distributed.optim import ZeroRedundancyOptimizer

                opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.SGD, lr=0.2)
            else:
                opt = torch.optim.SGD(model.parameters(), lr=0.2)
        losses = []
        x, y = _batch(rank)
        for _ in range(steps):
            loss = cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            mean = loss.detach().clone()
            dist.all_reduce(mean, op=dist.ReduceOp.SUM)
            losses.append(float(mean) / world)
        out: dict[str, Any] = {"losses": losses}
        pg = dist.group.WORLD
        if hasattr(pg, "stats"):
            out["stats"] = pg.stats()
        return out
    finally:
        dist.destroy_process_group()


def env_errors(rank: int, envs: list[dict[str, str]]) -> list[str]:
    """What ``init_process_group("netagg")`` raises with each environment (one rank, one process)."""
    from netagg.cli.launch import free_port

    out = []
    for env in envs:
        try:
            init(rank, 1, free_port(), env)
        except Exception as exc:
            out.append(f"{type(exc).__name__}: {exc}")
            continue
        import torch.distributed as dist

        dist.destroy_process_group()
        out.append("no error")
    return out


def switch_dies(rank: int, world: int, port: int, env: dict[str, str], switch_pid: int) -> dict[str, Any]:
    """One all_reduce through the switch, then rank 0 kills it (after a gloo barrier, so every rank got
    its result first): the next all_reduce's work fails at wait(), and so does the one after."""
    import signal
    import time

    import torch

    dist = init(rank, world, port, env)
    pg = dist.group.WORLD
    try:
        t = torch.ones(8)
        dist.all_reduce(t)
        gloo = pg._via_gloo("barrier", "test")  # the inner gloo group orders the kill
        gloo.barrier().wait()
        if rank == 0:
            os.kill(switch_pid, signal.SIGKILL)
            while _alive(switch_pid):  # a zombie (the test's child) or gone
                time.sleep(0.01)
        gloo.barrier().wait()
        errors = []
        t0 = time.monotonic()
        for _ in range(2):
            try:  # the first fails at wait(), the second at the call (the worker is broken by then)
                dist.all_reduce(torch.ones(8), async_op=True).wait()
                errors.append("")
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        return {"first": t.numpy().copy(), "errors": errors, "seconds": time.monotonic() - t0}
    finally:
        dist.destroy_process_group()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
