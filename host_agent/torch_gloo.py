"""What the ``netagg`` backend hands to its inner gloo group, and the count of it.

:class:`GlooRoutes` is the half of :class:`host_agent.torch_backend.NetAggProcessGroup` that the switch
has no part in: the collectives the network cannot do (point to point, all to all, gather, scatter,
reduce to one rank, the monitored barrier) always go to gloo; the others go there when their reduction
or dtype is not the switch's (the reason is the caller's). Every such collective is counted per op,
and the first of each kind is logged with its reason. :class:`FutureWork` is the Work the group
returns for what goes through the switch.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["FutureWork", "GlooRoutes", "all_works", "options"]

log = logging.getLogger("host_agent.torch_backend")

Work = Any  # torch's Work (C++); its Python stubs are incomplete


class FutureWork(dist.Work):
    """A Work that is done when its torch future is, and whose ``wait()`` raises the future's error.

    (torch's ``_create_work_from_future`` makes a Work whose ``wait()`` returns True, and whose
    ``is_success()`` says True, for a future that failed: a collective that failed would look done.)
    ``wait``'s timeout is not used: the worker fails a collective that makes no progress for its own
    timeout (``NETAGG_TIMEOUT``)."""

    def __init__(self, fut: torch.futures.Future[Any]) -> None:
        super().__init__()
        self._fut = fut

    def wait(self, timeout: timedelta | None = None) -> bool:
        self._fut.wait()  # raises the collective's error
        return True

    def get_future(self) -> torch.futures.Future[Any]:
        return self._fut

    def is_completed(self) -> bool:
        return self._fut.done()

    def result(self) -> Any:
        return self._fut.wait()


class GlooRoutes:
    """A mixin for a ProcessGroup with an inner gloo group ``_gloo``."""

    _gloo: Any
    _lock: threading.Lock
    _fallbacks: Counter[str]
    _reasons: dict[str, str]

    def _via_gloo(self, op: str, reason: str) -> Any:
        """The inner gloo group, for one collective of kind ``op`` that cannot go through the switch."""
        with self._lock:
            self._fallbacks[op] += 1
            first = op not in self._reasons
            if first:
                self._reasons[op] = reason
        if first:
            log.warning("netagg: %s goes through gloo (%s); counted in stats()['fallbacks']", op, reason)
        return self._gloo

    # -- always through gloo ---------------------------------------------------------------------
    def send(self, tensors: list[torch.Tensor], dst: int, tag: int) -> Work:
        return self._via_gloo("send", "point to point").send(tensors, dst, tag)

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int) -> Work:
        return self._via_gloo("recv", "point to point").recv(tensors, src, tag)

    def recv_anysource(self, tensors: list[torch.Tensor], tag: int) -> Work:
        return self._via_gloo("recv_anysource", "point to point").recv_anysource(tensors, tag)

    def alltoall(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None) -> Work:
        return self._via_gloo("alltoall", "all to all").alltoall(
            outputs, inputs, options(opts, "AllToAllOptions")
        )

    def alltoall_base(
        self,
        output: torch.Tensor,
        inp: torch.Tensor,
        output_splits: list[int],
        input_splits: list[int],
        opts: Any = None,
    ) -> Work:
        gloo = self._via_gloo("alltoall_base", "all to all")
        return gloo.alltoall_base(output, inp, output_splits, input_splits, options(opts, "AllToAllOptions"))

    def all_to_all_single(
        self,
        output: torch.Tensor,
        inp: torch.Tensor,
        output_splits: list[int],
        input_splits: list[int],
        opts: Any = None,
    ) -> Work:
        gloo = self._via_gloo("all_to_all_single", "all to all")
        return gloo.alltoall_base(output, inp, output_splits, input_splits, options(opts, "AllToAllOptions"))

    def gather(self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any = None) -> Work:
        return self._via_gloo("gather", "to one rank").gather(outputs, inputs, options(opts, "GatherOptions"))

    def scatter(
        self, outputs: list[torch.Tensor], inputs: list[list[torch.Tensor]], opts: Any = None
    ) -> Work:
        return self._via_gloo("scatter", "from one rank").scatter(
            outputs, inputs, options(opts, "ScatterOptions")
        )

    def reduce(self, tensors: list[torch.Tensor], opts: Any = None) -> Work:
        return self._via_gloo("reduce", "to one rank").reduce(tensors, options(opts, "ReduceOptions"))

    def monitored_barrier(self, timeout: timedelta | None = None, wait_all_ranks: bool = False) -> None:
        gloo = self._via_gloo("monitored_barrier", "names the missing rank")
        if timeout is None:
            gloo.monitored_barrier(wait_all_ranks=wait_all_ranks)
        else:
            gloo.monitored_barrier(timeout, wait_all_ranks)


def all_works(works: list[Work], result: list[torch.Tensor]) -> Work:
    """One work for several of gloo's (which may complete in any order)."""
    if len(works) == 1:
        return works[0]
    every = torch.futures.collect_all([w.get_future() for w in works])

    def check(fut: torch.futures.Future[Any]) -> list[torch.Tensor]:
        for each in fut.wait():
            each.wait()  # raises the first failure
        return result

    return FutureWork(every.then(check))


def options(opts: Any, name: str) -> Any:
    """``opts`` as given, or torch's defaults (``name``: the options class)."""
    if opts is not None:
        return opts
    import torch._C._distributed_c10d as c10d

    return getattr(c10d, name)()
