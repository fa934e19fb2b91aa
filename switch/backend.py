"""What a switch offers the control plane, whatever moves its packets: the :class:`SwitchBackend` interface.

A backend installs and removes jobs, fixes their workers' addresses and reads its counters. It knows
nothing of gRPC: it raises the plain exceptions below, and :class:`switch.agent.SwitchAgentService`
serves any backend over proto/netagg/v1's SwitchAgent, mapping each exception to its status code in one
place. Two backends exist: :class:`PythonBackend` (this module) over the Python switch's
:class:`~switch.core.Dataplane`, and :class:`switch.bmv2.Bmv2Backend` over BMv2's tables.

Example::

    backend = PythonBackend(Dataplane(), threading.Lock())
    backend.install(JobConfig(job_id=1, workers=2, slots=8, elements=64))
    backend.counters()["drops"]["unknown_job"]  # 0
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast, runtime_checkable

from netagg import __version__
from netagg.protocol import MAX_ELEMENTS, MAX_SLOTS, MAX_WORKERS
from switch.core import Address, Dataplane, JobConfig

__all__ = [
    "AlreadyExists",
    "BackendError",
    "Counters",
    "InvalidArgument",
    "NotFound",
    "PythonBackend",
    "ResourceExhausted",
    "SwitchBackend",
    "SwitchInfo",
    "Unavailable",
]

T = TypeVar("T")


class BackendError(Exception):
    """A backend could not do what was asked, for a reason of its own (the SwitchAgent: INTERNAL)."""


class InvalidArgument(BackendError):
    """The request is wrong whatever the switch's state: a field out of range, slots that overlap
    another job's, an address that cannot be reached from this switch (INVALID_ARGUMENT)."""


class NotFound(BackendError):
    """The job is not installed (NOT_FOUND)."""


class AlreadyExists(BackendError):
    """A job with that wire id is installed already (ALREADY_EXISTS)."""


class ResourceExhausted(BackendError):
    """The switch has no room for the job: every job entry of its tables is taken
    (RESOURCE_EXHAUSTED)."""


class Unavailable(BackendError):
    """The switch itself is gone (its process exited): try another (UNAVAILABLE)."""


@dataclass(frozen=True)
class SwitchInfo:
    """What a switch can hold (proto/netagg/v1 ``SwitchInfo``)."""

    kind: str
    """``"python"`` or ``"bmv2"``."""
    total_slots: int
    """Aggregation slots, shared by its jobs' disjoint ranges."""
    max_elements_per_packet: int
    """The most int32 elements one packet may carry."""
    min_elements_per_packet: int = 1
    max_workers: int = MAX_WORKERS
    version: str = __version__


#: ``{"counters": {name: value}, "drops": {reason: packets}}``, as :meth:`Dataplane.stats` gives them.
Counters = dict[str, dict[str, int]]


@runtime_checkable
class SwitchBackend(Protocol):
    """The switch's control interface. Every method is safe to call while packets flow and raises only
    :class:`BackendError` subclasses (besides bugs)."""

    def info(self) -> SwitchInfo:
        """Kind and capacities."""
        ...

    def install(self, cfg: JobConfig) -> None:
        """Add a job (with its workers' addresses if ``cfg.addresses`` is set).

        Raises AlreadyExists, InvalidArgument (out of range, overlapping, unsupported), or
        ResourceExhausted."""
        ...

    def remove(self, job_id: int) -> None:
        """Remove a job; its packets are dropped as unknown_job from then on. Raises NotFound."""
        ...

    def set_workers(self, job_id: int, addresses: Sequence[Address]) -> None:
        """Pin the job's worker addresses (index = worker id); new addresses begin a new JOIN round.
        Raises NotFound, InvalidArgument (wrong count, unreachable address)."""
        ...

    def counters(self, *, reset: bool = False) -> Counters:
        """Every counter; with ``reset``, zero them and return what they were."""
        ...


class PythonBackend:
    """:class:`SwitchBackend` over a :class:`Dataplane`; ``lock`` is the one its packet loop holds per
    datagram (:attr:`switch.udp.UdpSwitch.lock`), so a job changes between two datagrams."""

    def __init__(self, dataplane: Dataplane, lock: threading.Lock, *, total_slots: int = MAX_SLOTS) -> None:
        if not 1 <= total_slots <= MAX_SLOTS:
            raise ValueError(f"total_slots must be 1-{MAX_SLOTS}, got {total_slots}")
        self.dataplane = dataplane
        self.lock = lock
        self.total_slots = total_slots

    def _locked(self, fn: Callable[[], T]) -> T:
        """``fn()`` under the lock, the dataplane's ValueError/KeyError as InvalidArgument/NotFound."""
        with self.lock:
            try:
                return fn()
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
            except KeyError as exc:
                raise NotFound(str(exc.args[0]) if exc.args else "not found") from None

    def info(self) -> SwitchInfo:
        return SwitchInfo("python", self.total_slots, MAX_ELEMENTS)

    def install(self, cfg: JobConfig) -> None:
        if cfg.slot_base + cfg.slots > self.total_slots:
            raise InvalidArgument(
                f"slots [{cfg.slot_base}, {cfg.slot_base + cfg.slots}) lie outside this switch's "
                f"{self.total_slots} slots"
            )

        def install() -> None:
            if any(j.job_id == cfg.job_id for j in self.dataplane.jobs):
                raise AlreadyExists(f"job {cfg.job_id} is already installed")
            self.dataplane.install(cfg)

        self._locked(install)

    def remove(self, job_id: int) -> None:
        self._locked(lambda: self.dataplane.remove(job_id))

    def set_workers(self, job_id: int, addresses: Sequence[Address]) -> None:
        self._locked(lambda: self.dataplane.set_addresses(job_id, tuple(addresses)))

    def job_stats(self) -> dict[int, dict]:
        """Per-job counters, :meth:`Dataplane.job_stats` (not part of :class:`SwitchBackend`: a backend
        that cannot count per job has no such method, and the SwitchAgent reports none)."""
        job_stats = getattr(self.dataplane, "job_stats", None)
        if job_stats is None:  # a Dataplane from before per-job counters
            return {}
        return self._locked(lambda: copy.deepcopy(job_stats()))

    def counters(self, *, reset: bool = False) -> Counters:
        stats = self._locked(self.dataplane.reset_counters if reset else self.dataplane.stats)
        return {
            part: {k: int(v) for k, v in cast(dict, stats[part]).items()} for part in ("counters", "drops")
        }
