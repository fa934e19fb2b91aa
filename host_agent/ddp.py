"""A PyTorch DDP communication hook that allreduces gradient buckets through a netagg switch.

    import torch.distributed as dist
    from host_agent.ddp import NetAggState, netagg_hook

    dist.init_process_group("gloo", ...)            # still needed: DDP's set-up and the fallback use it
    model = torch.nn.parallel.DistributedDataParallel(model)
    model.register_comm_hook(NetAggState(switch="127.0.0.1:47000"), netagg_hook)
    # or, with a job created through the control plane (`netagg ctl create ...`):
    model.register_comm_hook(NetAggState(controller="127.0.0.1:47100", job="j-..."), netagg_hook)

The hook takes each bucket's flat gradient buffer, sends it through the switch (in place), divides by
the world size and completes the returned future from the agent's I/O thread, so the communication of
one bucket overlaps the backward pass of the next. When the switch cannot serve (unreachable, timeout,
no slots), the bucket falls back to a gloo allreduce of the same bucket, with one warning and a counter;
``fallback="error"`` raises instead.
"""

# No ``from __future__ import annotations`` here: DDP checks the hook's annotations as objects.
import concurrent.futures
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist

from host_agent.worker import NetAggError, Worker, parse_address

__all__ = ["NetAggState", "netagg_hook"]

log = logging.getLogger(__name__)


@dataclass
class NetAggStats:
    """What the hook did, per rank."""

    buckets: int = 0
    """Buckets allreduced (through the switch or the fallback)."""
    fallbacks: int = 0
    """Buckets that went through gloo because the switch could not serve."""
    elements: int = 0
    """Gradient elements sent through the switch."""


@dataclass
class NetAggState:
    """The hook's state: one per DDP model and rank. Every knob, and how to tune it:

    Args:
        switch: the switch's ``HOST:PORT`` (a static job).
        controller: instead of ``switch``, the controller's ``HOST:PORT``; ``job`` is then the
            controller's job id ("j-..."), whose switch, worker id and slots the controller hands out.
        token: bearer token for the controller (default: $NETAGG_TOKEN).
        rank, world_size: default to torch.distributed's.
        job: the job id configured at the switch (int), or the controller's job id (str).
        process_group: the group DDP uses; the fallback allreduces over it (default: the world).
        fallback: ``"gloo"`` sends a bucket the switch could not serve through the process group
            instead (a warning the first time, ``stats.fallbacks`` every time) and keeps doing so for
            the rest of the run; ``"error"`` raises :class:`host_agent.NetAggError` from the hook.
        timeout: seconds without progress before a bucket is given up on the switch. Lower detects a
            dead switch sooner; it must stay well above one step's compute so that slow ranks are
            not mistaken for a dead switch.
        join_timeout: seconds for every rank to join the switch's job at the first bucket; also how
            long the first bucket waits before falling back when the switch is not there at all.
        worker_options: anything else :class:`host_agent.Worker` takes (``min_rto``, ``max_rto``,
            ``nonfinite``, ``bind``).
    """

    switch: str | None = None
    rank: int | None = None
    world_size: int | None = None
    job: int | str = 1
    controller: str | None = None
    token: str | None = None
    process_group: Any = None
    fallback: Literal["gloo", "error"] = "gloo"
    timeout: float = 10.0
    join_timeout: float = 30.0
    worker_options: dict[str, Any] = field(default_factory=dict)
    stats: NetAggStats = field(default_factory=NetAggStats, init=False)

    def __post_init__(self) -> None:
        if (self.switch is None) == (self.controller is None):
            raise ValueError("give either switch='HOST:PORT' (a static job) or controller='HOST:PORT'")
        parse_address(self.switch or self.controller or "")  # ValueError with the reason for a bad address
        if self.controller is not None and not isinstance(self.job, str):
            raise ValueError(
                f"with controller=..., job is the controller's job id ('j-...'), got {self.job!r}"
            )
        if self.fallback not in ("gloo", "error"):
            raise ValueError(f"fallback must be 'gloo' or 'error', got {self.fallback!r}")
        if self.timeout <= 0 or self.join_timeout <= 0:
            raise ValueError("timeout and join_timeout must be positive")
        if self.rank is None or self.world_size is None:
            if not dist.is_available() or not dist.is_initialized():
                raise ValueError("rank and world_size are needed when torch.distributed is not initialized")
            self.rank = dist.get_rank(self.process_group) if self.rank is None else self.rank
            if self.world_size is None:
                self.world_size = dist.get_world_size(self.process_group)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        self._worker: Worker | None = None
        self._last_traffic: dict[str, int] = {}
        self._failed: str | None = None
        self._warned = False
        self._lock = threading.Lock()
        # Every collective the hook issues (through the switch or the fallback) runs on this one
        # thread, in bucket order, so all ranks issue them in the same order.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netagg-ddp")

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the configuration only: sockets and threads stay with the process that made them."""
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        state.pop("stats", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        self.stats = NetAggStats()
        self.__post_init__()

    # -- what the hook runs on the state's thread -------------------------------------------------
    def _worker_or_connect(self) -> "Worker":
        if self._worker is None:
            assert self.rank is not None and self.world_size is not None
            self._worker = Worker(
                self.switch,
                self.rank,
                self.world_size,
                job=self.job,
                controller=self.controller,
                token=self.token,
                timeout=self.timeout,
                join_timeout=self.join_timeout,
                **self.worker_options,
            )
        return self._worker

    def _allreduce_bucket(self, tensor: torch.Tensor) -> torch.Tensor:
        self.stats.buckets += 1
        if self._failed is None:
            try:
                # the mean, with the division folded into dequantization (no pass of its own);
                # gradient buckets are floating point
                self._worker_or_connect().allreduce(tensor, out=tensor, average=True)
                self.stats.elements += tensor.numel()
                return tensor
            except (NetAggError, OSError) as exc:
                if self.fallback == "error":
                    raise
                self._failed = str(exc)
                self._close_worker()
        if not self._warned:
            log.warning(
                "netagg: the switch at %s cannot serve (%s); buckets go through %s from now on",
                self.switch,
                self._failed,
                dist.get_backend(self.process_group),
            )
            self._warned = True
        self.stats.fallbacks += 1
        dist.all_reduce(tensor, group=self.process_group)
        return tensor.div_(self.world_size)  # type: ignore[arg-type]

    def _close_worker(self) -> None:
        if self._worker is not None:
            self._last_traffic = self._worker.stats.as_dict()
            try:
                self._worker.close()
            finally:
                self._worker = None

    def traffic(self) -> dict[str, int]:
        """This rank's datagrams and bytes to and from the switch (the host agent's counters)."""
        return self._worker.stats.as_dict() if self._worker is not None else dict(self._last_traffic)

    def close(self) -> None:
        """Finish pending buckets and release the switch connection."""
        self._executor.shutdown(wait=True)
        self._close_worker()


def netagg_hook(state: NetAggState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the bucket's sum through the switch, divided by the world size.

    Register with ``model.register_comm_hook(NetAggState(switch=...), netagg_hook)``. The returned
    future is completed by the hook's I/O thread; the autograd thread goes on with backward meanwhile.
    """
    tensor = bucket.buffer()
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()

    def done(job: concurrent.futures.Future[torch.Tensor]) -> None:
        exc = job.exception()
        if exc is not None:
            fut.set_exception(exc)  # type: ignore[arg-type]  # (torch types it as the result type)
        else:
            fut.set_result(job.result())

    state._executor.submit(state._allreduce_bucket, tensor).add_done_callback(done)
    return fut
