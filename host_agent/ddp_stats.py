"""What the DDP hook did, per rank: buckets and bytes through the switch and through the process
group, failures and their causes, tries to go back (:meth:`host_agent.ddp.NetAggState.summary`)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["NetAggStats"]


@dataclass
class NetAggStats:
    """What the hook did, per rank (:meth:`NetAggState.summary` returns it as a dict)."""

    buckets: int = 0
    """Buckets allreduced, by either way."""
    switch_buckets: int = 0
    """Buckets whose result came from the switch (including ``peer_buckets``)."""
    switch_bytes: int = 0
    """Gradient bytes of those buckets (bucket sizes, not bytes on the wire)."""
    gloo_buckets: int = 0
    """Buckets allreduced by the process group because the switch did not serve."""
    gloo_bytes: int = 0
    """Gradient bytes of those buckets."""
    peer_buckets: int = 0
    """Buckets whose switch result another rank passed on: this rank's call failed, theirs did not."""
    fallbacks: int = 0
    """Calls through the switch that failed (a first failure and each failed try to go back)."""
    retries: int = 0
    """Tries to go back to the switch."""
    returns: int = 0
    """Tries that succeeded: the switch served again."""
    causes: dict[str, int] = field(default_factory=dict)
    """Why calls failed: the error's type and message, and how many times."""
