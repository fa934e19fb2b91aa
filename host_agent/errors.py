"""What a worker raises: every failure of a call is a :class:`NetAggError` with a cause to act on."""

from __future__ import annotations

__all__ = ["ControllerError", "JobReformed", "NetAggError", "NetAggTimeout", "NonFiniteError", "RefusedError"]


class NetAggError(RuntimeError):
    """The allreduce could not be carried out (the worker is unusable afterwards)."""


class ControllerError(NetAggError):
    """The controller refused a request; :attr:`code` is its gRPC status name ("ALREADY_EXISTS", ...)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class NetAggTimeout(NetAggError, TimeoutError):
    """No progress for ``timeout`` seconds: the switch or another worker is gone."""


class RefusedError(NetAggError):
    """The switch refused this worker's packets for a reason it named (docs/protocol.md, "Refusals");
    :attr:`reason` is the switch's drop reason (``"unknown_job"``, ``"count_mismatch"``, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class JobReformed(NetAggError):
    """The job started over at the switch (a worker joined afresh) while this call was in flight: the
    call cannot complete, but the worker can make the next one (its use numbers started over too)."""


class NonFiniteError(ValueError):
    """Some worker's input had inf or NaN; every worker raises it for the same blocks."""
