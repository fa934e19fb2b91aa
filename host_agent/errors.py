"""What a worker raises: every failure of a call is a :class:`NetAggError` with a cause to act on."""

from __future__ import annotations

__all__ = ["NetAggError", "NetAggTimeout", "NonFiniteError", "RefusedError"]


class NetAggError(RuntimeError):
    """The allreduce could not be carried out (the worker is unusable afterwards)."""


class NetAggTimeout(NetAggError, TimeoutError):
    """No progress for ``timeout`` seconds: the switch or another worker is gone."""


class RefusedError(NetAggError):
    """The switch refused this worker's packets for a reason it named (docs/protocol.md, "Refusals");
    :attr:`reason` is the switch's drop reason (``"unknown_job"``, ``"count_mismatch"``, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NonFiniteError(ValueError):
    """Some worker's input had inf or NaN; every worker raises it for the same blocks."""
