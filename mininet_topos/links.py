"""Links that behave like links, for the namespace builder: a rate limit (tc ``tbf``) on the egress of
each end of a veth (so each direction is shaped once), delay and loss with tc ``netem`` where the
kernel has sch_netem, and where it does not, loss with nftables (delay is then refused, saying why).

Everything is one ``tc``/``nft`` command per step, run in the node's namespace with ``ip netns exec``
(argument lists, no shell). The tbf queue holds ``QUEUE_S`` seconds of the link's rate (at least
``MIN_QUEUE_BYTES``): enough for netagg's window (64 slots x 8 KB per worker) and for TCP to keep the
link busy; a datagram that finds it full is dropped, as on a switch port.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Sequence

__all__ = [
    "MIN_QUEUE_BYTES",
    "QUEUE_S",
    "LinkShapeError",
    "bridge_loss",
    "netem_missing",
    "shape",
    "tbf_args",
]

QUEUE_S = 0.1
"""Seconds of the link's rate its egress queue holds."""
MIN_QUEUE_BYTES = 2 << 20
"""The smallest egress queue (bytes): 4 workers' windows of 64 packets of 2,000 elements."""


class LinkShapeError(RuntimeError):
    """A link parameter this kernel cannot make (delay without sch_netem), or a tc command failed."""


def _ns(namespace: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", "netns", "exec", namespace, *cmd], capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise LinkShapeError(f"{' '.join(cmd)} in {namespace}: {r.stderr.strip()}")
    return r


@functools.cache
def netem_missing() -> str | None:
    """Why tc netem cannot be used on this kernel (None if it can); probed once, on a veth in a
    namespace of its own."""
    ns = f"nmprobe{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        _ns(ns, "ip", "link", "add", "pa", "type", "veth", "peer", "name", "pb")
        r = _ns(ns, "tc", "qdisc", "add", "dev", "pa", "root", "netem", "delay", "1ms", check=False)
        return None if r.returncode == 0 else f"tc netem: {r.stderr.strip() or 'refused'}"
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def tbf_args(mbit: float, mtu: int) -> list[str]:
    """The ``tc qdisc ... tbf`` parameters for ``mbit`` Mbit/s: burst of two frames or 1 ms of the rate
    (whichever is more; the average rate is exact, the burst only bounds how far ahead it may run), and
    a queue of ``QUEUE_S`` seconds."""
    if not mbit > 0:
        raise ValueError(f"bandwidth must be positive, got {mbit} Mbit/s")
    rate = mbit * 1e6 / 8  # bytes per second
    burst = max(2 * (mtu + 14), int(rate / 1000))
    limit = max(MIN_QUEUE_BYTES, int(rate * QUEUE_S))
    return ["tbf", "rate", f"{int(mbit * 1000)}kbit", "burst", str(burst), "limit", str(limit)]


def shape(
    namespace: str,
    iface: str,
    *,
    bandwidth_mbit: float | None,
    delay_ms: float | None,
    loss_percent: float,
    mtu: int,
) -> str:
    """Shape the egress of ``iface`` in ``namespace``: tbf for the rate, netem (root, the tbf under it,
    as tc-netem(8) does it) for delay and loss. Returns what shapes it: "tbf", "netem", "netem+tbf" or
    "" (nothing asked). Loss without netem is not made here (returns "tbf"/"" and the caller falls
    back to nftables); delay without netem raises :class:`LinkShapeError`."""
    netem: list[str] = []
    if delay_ms:
        netem += ["delay", f"{int(delay_ms * 1000)}us"]
    if loss_percent:
        netem += ["loss", f"{loss_percent}%"]
    if netem and netem_missing() is not None:
        if delay_ms:
            raise LinkShapeError(
                f"link delay needs tc netem, which this kernel lacks ({netem_missing()}); "
                "bandwidth (tbf) and loss (nftables) work without it"
            )
        netem = []
    tbf = tbf_args(bandwidth_mbit, mtu) if bandwidth_mbit else []
    dev = ["dev", iface]
    if netem:
        _ns(namespace, "tc", "qdisc", "add", *dev, "root", "handle", "1:", "netem", *netem, "limit", "100000")
        if tbf:
            _ns(namespace, "tc", "qdisc", "add", *dev, "parent", "1:1", "handle", "10:", *tbf)
        return "netem+tbf" if tbf else "netem"
    if tbf:
        _ns(namespace, "tc", "qdisc", "add", *dev, "root", "handle", "1:", *tbf)
        return "tbf"
    return ""


def bridge_loss(namespace: str, ports: Sequence[tuple[str, float, bool]]) -> None:
    """Loss on a kernel bridge's links without netem: every frame that arrives on port ``p`` is dropped
    with its link's probability (bridge prerouting, ``iifname``), and so is every frame the bridge sends
    out of a port whose other end is a host (postrouting, ``oifname``; the switch at the other end of a
    switch-to-switch link drops on arrival). TCP and UDP alike, as a lossy wire would. ``ports``:
    (interface, loss percent, the other end is a host). The table is named "loss"."""
    cmds = [["add", "table", "bridge", "loss"]]
    for hook in ("prerouting", "postrouting"):
        cmds.append(["add", "chain", "bridge", "loss", hook, f"{{ type filter hook {hook} priority 0; }}"])
    for iface, percent, to_host in ports:
        if not percent:
            continue
        drop = ["numgen", "random", "mod", "100000", "<", str(int(percent * 1000)), "counter", "drop"]
        cmds.append(["add", "rule", "bridge", "loss", "prerouting", "iifname", iface, *drop])
        if to_host:
            cmds.append(["add", "rule", "bridge", "loss", "postrouting", "oifname", iface, *drop])
    for cmd in cmds:
        _ns(namespace, "nft", *cmd)
