"""The torch.distributed backend ``"netagg"``: collectives through a netagg switch.

    import host_agent                               # registers the backend (so does torch's entry point)
    import torch.distributed as dist

    # NETAGG_SWITCH=127.0.0.1:47000 (a static job), or NETAGG_CONTROLLER + NETAGG_JOB=j-... + NETAGG_TOKEN
    dist.init_process_group("netagg", init_method="tcp://...", rank=r, world_size=w)  # or torchrun's env://

:class:`NetAggProcessGroup` is a Python :class:`torch.distributed.ProcessGroup` over one
:class:`host_agent.Worker`. allreduce (SUM, AVG, MAX, MIN), reduce-scatter, all-gather, broadcast and
barrier go through the switch for float32, bfloat16, float16 and int32 (gathers and broadcasts: any
dtype, as bytes); everything else (send/recv, all_to_all, gather, scatter, reduce to one rank, other
reductions and dtypes) goes through a gloo group built on the same store, counted per op in
:meth:`NetAggProcessGroup.stats` and logged once per kind. Collectives return at once: the worker's I/O
thread carries them out in the order they were made and completes each work's future, so the caller
(DDP's backward pass, FSDP2's prefetch) computes meanwhile.

Only the group created first in a process (normally the default group) uses the switch: a job at the
switch has one member per rank. Further ``netagg`` groups (``new_group``, DeviceMesh sub-meshes) are
gloo groups with the same stats, their collectives counted as fallbacks (reason ``"subgroup"``).
Where the environment comes from: :mod:`host_agent.torch_config`.
"""

# torch's stubs declare each collective with its pybind overloads (and a ProcessGroup built from a
# store); c10d calls a Python group's methods in the options form alone, which is what this class has.
# mypy: disable-error-code="override, misc"
from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from host_agent.torch_config import BackendConfig, config_from_env
from host_agent.torch_gloo import FutureWork, GlooRoutes, Work, all_works, options
from host_agent.worker import Worker

__all__ = ["BACKEND", "NetAggProcessGroup", "create_process_group", "register"]

log = logging.getLogger(__name__)

BACKEND = "netagg"

REDUCE_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16, torch.int32})
"""Element types the switch reduces (floats quantized, docs/protocol.md "Quantization"; int32 exact)."""

_FLOATS = frozenset({torch.float32, torch.bfloat16, torch.float16})
_SUM, _AVG = dist.ReduceOp.SUM, dist.ReduceOp.AVG
_SWITCH_OPS = {_SUM: "sum", _AVG: "sum", dist.ReduceOp.MAX: "max", dist.ReduceOp.MIN: "min"}


def _red_op(op: Any) -> Any:
    """The RedOpType of a ReduceOp or RedOpType."""
    return getattr(op, "op", op)


class NetAggProcessGroup(GlooRoutes, dist.ProcessGroup):
    """One rank of a torch.distributed group whose collectives go through a netagg switch.

    Made by :func:`create_process_group` (``init_process_group("netagg")`` calls it); ``worker`` is None
    for a group that sends everything through ``gloo``.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        worker: Worker | None,
        gloo: Any,
        where: str,
    ) -> None:
        super().__init__(rank, world_size)  # type: ignore[call-arg]  # (the stubs know the store form)
        self._rank, self._world = rank, world_size
        self._worker = worker
        self._no_switch = "subgroup"  # why collectives go to gloo when there is no worker
        self._gloo = gloo
        self._where = where
        self._group_name = ""
        self._lock = threading.Lock()
        self._switch_ops: Counter[str] = Counter()
        self._fallbacks: Counter[str] = Counter()
        self._reasons: dict[str, str] = {}

    # -- identity --------------------------------------------------------------------------------
    def size(self) -> int:
        return self._world

    def rank(self) -> int:
        return self._rank

    def getBackendName(self) -> str:  # noqa: N802 (torch's name)
        return BACKEND

    def _set_group_name(self, name: Any) -> None:
        """c10d names every group after creating it; DeviceMesh and functional collectives look it up."""
        self._group_name = name
        super()._set_group_name(name)

    @property
    def group_name(self) -> str:
        if not self._group_name:
            raise RuntimeError("the netagg process group has no name yet (c10d sets it after creation)")
        return self._group_name

    def __repr__(self) -> str:
        return f"NetAggProcessGroup(rank={self._rank}, world_size={self._world}, {self._where})"

    # -- what went where -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Collectives through the switch and through gloo (per op), and the worker's traffic."""
        with self._lock:
            out: dict[str, Any] = {
                "switch": self._worker is not None,
                "where": self._where,
                "switch_ops": dict(self._switch_ops),
                "fallbacks": dict(self._fallbacks),
                "fallback_reasons": dict(self._reasons),
            }
        out["traffic"] = self._worker.stats.as_dict() if self._worker is not None else {}
        return out

    @property
    def worker(self) -> Worker | None:
        """The worker that carries this group's collectives (None for a gloo-only group)."""
        return self._worker

    def shutdown(self) -> None:
        """Finish queued collectives and release the worker (``destroy_process_group`` calls it)."""
        worker, self._worker = self._worker, None
        self._no_switch = "shut down"
        if worker is not None:
            worker.close()

    def abort(self) -> None:
        self.shutdown()

    # -- plumbing ------------------------------------------------------------------------------
    def _switch(self, op: str) -> Worker:
        with self._lock:
            self._switch_ops[op] += 1
        assert self._worker is not None
        return self._worker

    def _reason(self, kind: str, tensors: Sequence[torch.Tensor], op: Any = None) -> str | None:
        """Why this collective cannot go through the switch, or None if it can."""
        if self._worker is None:
            return self._no_switch
        for t in tensors:
            if t.device.type != "cpu":
                return f"{t.device.type} tensor"
        if op is not None:
            red = _red_op(op)
            if red not in _SWITCH_OPS:
                return f"reduction {red.name}"
            for t in tensors:
                if t.dtype not in REDUCE_DTYPES:
                    return f"{t.dtype} reduction"
                if red == _AVG and t.dtype not in _FLOATS:
                    return f"AVG of {t.dtype}"
        return None

    def _work(
        self,
        futures: Sequence[concurrent.futures.Future[Any]],
        result: list[torch.Tensor],
        then: Callable[[], None] | None = None,
    ) -> Work:
        """A Work completed (from the worker's I/O thread) once every future is done: with ``result``
        after running ``then`` (copies into the caller's tensors), or with the first error."""
        fut: torch.futures.Future[list[torch.Tensor]] = torch.futures.Future()
        left = [len(futures)]
        failed = [False]
        lock = threading.Lock()

        def done(f: concurrent.futures.Future[Any]) -> None:
            exc = f.exception()
            with lock:
                left[0] -= 1
                if failed[0]:
                    return
                if exc is None and left[0]:
                    return
                failed[0] = exc is not None
            if exc is not None:
                fut.set_exception(exc)  # type: ignore[arg-type]  # (torch types it as the result type)
                return
            try:
                if then is not None:
                    then()
            except Exception as err:
                fut.set_exception(err)  # type: ignore[arg-type]
                return
            fut.set_result(result)

        if not futures:
            fut.set_result(result)
        for f in futures:
            f.add_done_callback(done)
        return FutureWork(fut)

    def _each(
        self,
        targets: list[torch.Tensor],
        start: Callable[[torch.Tensor, int], concurrent.futures.Future[Any]],
    ) -> Work:
        """``start(buf, i)`` for each target: a worker call that writes into ``buf``, the target itself
        or, for a non-contiguous one, a contiguous copy written back when the call is done."""
        futures, backs = [], []
        for i, t in enumerate(targets):
            buf = t if t.is_contiguous() else t.contiguous()
            futures.append(start(buf, i))
            if buf is not t:
                backs.append((t, buf))

        def write_back() -> None:
            for t, buf in backs:
                t.copy_(buf)

        return self._work(futures, targets, write_back if backs else None)

    # -- allreduce -----------------------------------------------------------------------------
    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> Work:
        op = opts.reduceOp if opts is not None else dist.ReduceOp.SUM
        why = self._reason("allreduce", tensors, op)
        if why is not None:
            return self._via_gloo("allreduce", why).allreduce(tensors, options(opts, "AllreduceOptions"))
        return self._allreduce(tensors, op, "allreduce")

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts: Any = None) -> Work:
        op = opts.reduceOp if opts is not None else dist.ReduceOp.SUM
        why = self._reason("allreduce_coalesced", tensors, op)
        if why is not None:
            gloo = self._via_gloo("allreduce_coalesced", why)
            return gloo.allreduce_coalesced(tensors, options(opts, "AllreduceCoalescedOptions"))
        return self._allreduce(tensors, op, "allreduce_coalesced")

    def _allreduce(self, tensors: list[torch.Tensor], op: Any, kind: str) -> Work:
        worker, red = self._switch(kind), _red_op(op)
        how = {"op": _SWITCH_OPS[red], "average": red == _AVG}
        return self._each(tensors, lambda buf, _: worker.allreduce_async(buf, buf, **how))

    # -- reduce-scatter ------------------------------------------------------------------------
    def reduce_scatter_single(self, output: torch.Tensor, inp: torch.Tensor, opts: Any = None) -> Work:
        return self._reduce_scatter_many([output], [inp], opts, "reduce_scatter_single")

    def _reduce_scatter_base(self, output: torch.Tensor, inp: torch.Tensor, opts: Any = None) -> Work:
        return self._reduce_scatter_many([output], [inp], opts, "_reduce_scatter_base")

    def reduce_scatter(
        self, outputs: list[torch.Tensor], inputs: list[list[torch.Tensor]], opts: Any = None
    ) -> Work:
        op = opts.reduceOp if opts is not None else dist.ReduceOp.SUM
        flat = [t for ts in inputs for t in ts]
        why = self._reason("reduce_scatter", [*outputs, *flat], op)
        if why is None and any(len(ts) != self._world for ts in inputs):
            why = "input lists not of world size"
        if why is None and any(
            t.numel() != o.numel() or t.dtype != o.dtype
            for o, ts in zip(outputs, inputs, strict=True)
            for t in ts
        ):
            why = "uneven inputs"
        if why is not None:
            return self._via_gloo("reduce_scatter", why).reduce_scatter(
                outputs, inputs, options(opts, "ReduceScatterOptions")
            )
        wholes = [torch.cat([t.reshape(-1) for t in ts]) for ts in inputs]
        return self._reduce_scatter_into(outputs, wholes, op, "reduce_scatter")

    def reduce_scatter_single_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None
    ) -> Work:
        return self._reduce_scatter_many(outputs, inputs, opts, "reduce_scatter_single_coalesced")

    def reduce_scatter_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None
    ) -> Work:
        return self._reduce_scatter_many(outputs, inputs, opts, "reduce_scatter_tensor_coalesced")

    def _reduce_scatter_many(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any, kind: str
    ) -> Work:
        op = opts.reduceOp if opts is not None else dist.ReduceOp.SUM
        why = self._reason(kind, [*outputs, *inputs], op)
        if why is None and any(
            i.numel() != o.numel() * self._world or i.dtype != o.dtype
            for o, i in zip(outputs, inputs, strict=True)
        ):
            why = "input not world size x output"  # gloo raises torch's own error for it
        if why is not None:
            gloo, gopts = self._via_gloo(kind, why), options(opts, "ReduceScatterOptions")
            works = [gloo._reduce_scatter_base(o, i, gopts) for o, i in zip(outputs, inputs, strict=True)]
            return all_works(works, outputs)
        return self._reduce_scatter_into(outputs, inputs, op, kind)

    def _reduce_scatter_into(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], op: Any, kind: str
    ) -> Work:
        worker, red = self._switch(kind), _red_op(op)
        how = {"op": _SWITCH_OPS[red], "average": red == _AVG}
        return self._each(
            outputs, lambda buf, i: worker.reduce_scatter_async(inputs[i].contiguous(), buf, **how)
        )

    # -- all-gather ----------------------------------------------------------------------------
    def all_gather_single(self, output: torch.Tensor, inp: torch.Tensor, opts: Any = None) -> Work:
        return self._all_gather_many([output], [inp], opts, "all_gather_single")

    def _allgather_base(self, output: torch.Tensor, inp: torch.Tensor, opts: Any = None) -> Work:
        return self._all_gather_many([output], [inp], opts, "_allgather_base")

    def allgather_into_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None
    ) -> Work:
        return self._all_gather_many(outputs, inputs, opts, "allgather_into_tensor_coalesced")

    def all_gather_single_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None
    ) -> Work:
        return self._all_gather_many(outputs, inputs, opts, "all_gather_single_coalesced")

    def _all_gather_many(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any, kind: str
    ) -> Work:
        why = self._reason(kind, [*outputs, *inputs])
        if why is None and any(
            o.numel() != i.numel() * self._world or o.dtype != i.dtype
            for o, i in zip(outputs, inputs, strict=True)
        ):
            why = "output not world size x input"
        if why is not None:
            gloo, gopts = self._via_gloo(kind, why), options(opts, "AllgatherOptions")
            works = [gloo._allgather_base(o, i, gopts) for o, i in zip(outputs, inputs, strict=True)]
            return all_works(works, outputs)
        worker = self._switch(kind)
        return self._each(outputs, lambda buf, i: worker.all_gather_async(inputs[i].contiguous(), buf))

    def allgather(
        self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any = None
    ) -> Work:
        return self._allgather_lists(outputs, inputs, opts, "allgather")

    def allgather_coalesced(
        self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any = None
    ) -> Work:
        return self._allgather_lists(outputs, inputs, opts, "allgather_coalesced")

    def _allgather_lists(
        self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any, kind: str
    ) -> Work:
        why = self._reason(kind, [*inputs, *(t for ts in outputs for t in ts)])
        if why is None and any(
            len(ts) != self._world or any(t.numel() != i.numel() or t.dtype != i.dtype for t in ts)
            for ts, i in zip(outputs, inputs, strict=True)
        ):
            why = "uneven outputs"
        if why is not None:
            gloo, gopts = self._via_gloo(kind, why), options(opts, "AllgatherOptions")
            if kind == "allgather_coalesced":
                return gloo.allgather_coalesced(outputs, inputs, gopts)
            return gloo.allgather(outputs, inputs, gopts)
        worker = self._switch(kind)
        futures, copies = [], []
        for ts, inp in zip(outputs, inputs, strict=True):
            whole = torch.empty(self._world * inp.numel(), dtype=inp.dtype)
            futures.append(worker.all_gather_async(inp.contiguous(), whole))
            copies.append((ts, whole))

        def scatter_copies() -> None:
            for ts, whole in copies:
                for t, part in zip(ts, whole.chunk(self._world), strict=True):
                    t.copy_(part.view(t.shape))

        return self._work(futures, [t for ts in outputs for t in ts], scatter_copies)

    # -- broadcast, barrier --------------------------------------------------------------------
    def broadcast(self, tensors: list[torch.Tensor], opts: Any = None) -> Work:
        root = opts.rootRank if opts is not None else 0
        why = self._reason("broadcast", tensors)
        if why is None and opts is not None and opts.rootTensor != 0:
            why = "root tensor other than 0"
        if why is not None:
            return self._via_gloo("broadcast", why).broadcast(tensors, options(opts, "BroadcastOptions"))
        worker = self._switch("broadcast")
        return self._each(tensors, lambda buf, _: worker.broadcast_async(buf, root, buf))

    def barrier(self, opts: Any = None) -> Work:
        why = self._reason("barrier", [])
        if why is not None:
            return self._via_gloo("barrier", why).barrier(options(opts, "BarrierOptions"))
        return self._work([self._switch("barrier").barrier_async()], [])


# -- creation and registration ---------------------------------------------------------------------
_groups_lock = threading.Lock()
_switch_groups: list[NetAggProcessGroup] = []  # groups of this process that hold a worker


def create_process_group(store: Any, rank: int, world_size: int, timeout: timedelta) -> NetAggProcessGroup:
    """``init_process_group("netagg")``'s creator (and ``new_group(backend="netagg")``'s): a gloo group
    on ``store`` for what the switch cannot do, and, for the first such group of the process, a worker
    that joins the job the environment names (waiting up to ``timeout`` for every rank)."""
    with _groups_lock:
        _switch_groups[:] = [g for g in _switch_groups if g.worker is not None]
        first = not _switch_groups
    config: BackendConfig | None = config_from_env(os.environ) if first else None
    gloo = dist.ProcessGroupGloo(dist.PrefixStore("netagg-gloo/", store), rank, world_size, timeout)
    if config is None:
        log.info("netagg: a further group (rank %d of %d) goes through gloo", rank, world_size)
        return NetAggProcessGroup(rank, world_size, None, gloo, "gloo (another netagg group has the switch)")
    worker = Worker(
        rank=rank,
        world_size=world_size,
        join_timeout=max(timeout.total_seconds(), 1.0),
        **config.worker_kwargs(),
    )
    group = NetAggProcessGroup(rank, world_size, worker, gloo, config.describe())
    with _groups_lock:
        _switch_groups.append(group)
    log.info("netagg: rank %d of %d joined %s", rank, world_size, config.describe())
    return group


def register() -> None:
    """Make ``"netagg"`` a torch.distributed backend for CPU tensors (idempotent)."""
    if BACKEND not in dist.Backend.backend_list:
        dist.Backend.register_backend(BACKEND, create_process_group, devices=["cpu"])
