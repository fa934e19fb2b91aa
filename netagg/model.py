"""A scale model of allreduce, reduce-scatter and all-gather: ring, tree and in-network aggregation (INA).

The form is NCCL's tuning model (``src/graph/tuning.cc``): per algorithm, a time is a latency (a fixed
cost per call plus the algorithm's steps times the latency of one step) plus the bytes each host moves
divided by the bandwidth that limits it. What each algorithm moves per host link, in each direction,
for S bytes per host and n workers:

==========  ============================  ==========================  ===============================
algorithm   allreduce                     reduce-scatter, all-gather  steps (allreduce)
==========  ============================  ==========================  ===============================
ring        2S(n-1)/n                     S(n-1)/n                    2(n-1)
tree        2S (a double binary tree:     S + S/2 (a reduce, then     2 ceil(log2 n)
            each host interior in one     the shards scattered down   (up, then down)
            tree, a leaf in the other)    the same trees)
INA         S up, S down                  S up, S/n down (or back)    2C (C levels of switches)
==========  ============================  ==========================  ===============================

(SwitchML's and ATP's analyses: a host link carries S each way, against the ring's 2S(n-1)/n, so INA at
best about halves the bytes; the gain at scale is the steps, O(C) against O(n) and O(log n).)

The bandwidth is the smallest of what bounds the stream of packets: the link (its rate, less the
headers each frame carries), for INA the busiest switch (a per-packet and a per-byte cost for every
contribution it adds: F children and, below the root, the parent's result), the host's own per-byte and
per-packet cost, INA's window (slots x payload per round trip), and, for the TCP of ring and tree under
loss, the Mathis bound (MSS / RTT x sqrt(3 / 2p)). INA under loss repeats each slot use that lost a
packet anywhere in the tree (its hosts and switches handle it again: the bounds grow by 1 + P(use
lost)) and waits for its repair: uses x P(use lost) x recovery time / slots in flight.

``Costs.cores`` models the emulator: every host and switch process shares a few CPU cores, so their CPU
work adds up and is divided by the cores. On real machines (``cores=None``) each host has its own CPU and
the switch is its own (hardware: set its costs to 0 to leave only the links).

Units: seconds, bytes, bytes per second. Pure computation: no sockets, no processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

__all__ = [
    "ALGORITHMS",
    "COLLECTIVES",
    "Config",
    "Costs",
    "Prediction",
    "bound",
    "bytes_per_host",
    "levels",
    "predict",
    "steps",
]

ALGORITHMS = ("ring", "tree", "ina")
COLLECTIVES = ("allreduce", "reduce_scatter", "all_gather")

ETH_IP_UDP = 14 + 20 + 8
"""Bytes of Ethernet, IPv4 and UDP headers in front of each INA packet's netagg header."""
NETAGG_HEADER = 24
"""netagg's header (``netagg.protocol.HEADER_SIZE``; written out to keep this module free of imports)."""
TCP_OVERHEAD = 14 + 20 + 32
"""Ethernet, IPv4 and TCP (with timestamps) headers of each ring or tree segment."""


@dataclass(frozen=True)
class Config:
    """One collective on one network: what the model predicts a time for."""

    workers: int
    """n: hosts taking part, one worker each."""
    size_bytes: float
    """S: bytes of each host's tensor (allreduce, reduce-scatter: its input; all-gather: its output)."""
    bandwidth_bps: float = math.inf
    """Each host link's rate in bits per second, each direction (full duplex); inf: not a bound."""
    link_latency_s: float | None = None
    """One-way latency of a link (wire and forwarding); None: the calibrated ``Costs.link_latency_s``."""
    loss: float = 0.0
    """Probability that a link drops a packet, each link and direction."""
    fan_in: int = 0
    """F: children per INA switch; 0 (or F >= n): one switch for all workers (C = 1)."""
    payload_bytes: int = 8000
    """INA payload per packet (elements x 4)."""
    mtu: int = 9000
    """The links' MTU: a TCP segment carries MTU - 52 bytes."""
    slots: int = 64
    """INA slots (packets) in flight per worker."""
    via_switch: bool = False
    """Ring and tree frames are forwarded by software switches that charge them CPU (the emulator's
    Python switch nodes); False: by hardware, a kernel bridge, or no switch at all (loopback)."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.size_bytes < 0:
            raise ValueError(f"size must be non-negative, got {self.size_bytes}")
        if not self.bandwidth_bps > 0:
            raise ValueError(f"bandwidth must be positive, got {self.bandwidth_bps}")
        if self.link_latency_s is not None and self.link_latency_s < 0:
            raise ValueError(f"latency must be non-negative, got {self.link_latency_s}")
        if not 0 <= self.loss < 1:
            raise ValueError(f"loss is a probability in [0, 1), got {self.loss}")
        if self.fan_in < 0 or self.fan_in == 1:
            raise ValueError(f"fan-in must be 0 (one switch) or at least 2, got {self.fan_in}")
        if self.payload_bytes < 4:
            raise ValueError(f"payload must be at least 4 bytes, got {self.payload_bytes}")
        if self.mtu <= TCP_OVERHEAD or self.payload_bytes + ETH_IP_UDP + NETAGG_HEADER - 14 > self.mtu:
            raise ValueError(f"payload {self.payload_bytes} B does not fit the MTU {self.mtu}")
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, got {self.slots}")


@dataclass(frozen=True)
class Costs:
    """What the hardware and software cost: calibrated (``netagg model calibrate``) or assumed.

    The ``ina_*`` and ``switch_*`` costs are netagg's; ``ring_*`` are those of the ring or tree library
    (gloo's on the emulator). Times in seconds.
    """

    call_s: float = 0.0
    """Fixed cost of one INA collective call (NCCL's base latency)."""
    link_latency_s: float = 0.0
    """One-way latency of one link, when the configuration does not give it."""
    host_byte_s: float = 0.0
    """INA host CPU per byte of payload sent and received (packing, copying, the reduction's result)."""
    host_packet_s: float = 0.0
    """INA host CPU per packet (a system call's share, the engine's bookkeeping)."""
    switch_packet_s: float = 0.0
    """Switch CPU per contribution packet (parse, slot state, its share of the replies)."""
    switch_byte_s: float = 0.0
    """Switch CPU per byte of contribution payload (the addition)."""
    loss_recovery_s: float = 0.0
    """Time a slot use that lost a packet waits before it is repaired (a timer, or a gap's round trip)."""
    ring_call_s: float = 0.0
    """Fixed cost of one ring or tree call."""
    ring_step_s: float = 0.0
    """Software latency of one ring or tree step (on top of the links' latency)."""
    ring_byte_s: float = 0.0
    """Ring or tree host CPU per byte it sends (TCP, the reduction)."""
    cores: float | None = None
    """CPU cores every host and switch process shares (the emulator: effective cores, as fitted); None:
    each its own."""

    def with_values(self, **values: float) -> Costs:
        return replace(self, **values)

    def as_dict(self) -> dict[str, float | int | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Prediction:
    """A predicted time and its parts."""

    seconds: float
    latency_s: float
    """The latency term: fixed cost and steps x step latency."""
    transfer_s: float
    """Bytes per host over the limiting bandwidth."""
    loss_s: float
    """Time lost waiting on repairs (INA)."""
    steps: int
    bytes_per_host: float
    """Bytes each host link carries in its busiest direction."""
    bottleneck: str
    """What sets the transfer term: link, host, switch, window, tcp-loss or cpu (the shared cores)."""


def levels(workers: int, fan_in: int) -> int:
    """C: levels of switches in a tree of fan-in ``fan_in`` over ``workers`` (0 or >= n: one switch)."""
    if fan_in == 0 or fan_in >= workers:
        return 1
    c, reach = 1, fan_in
    while reach < workers:
        c, reach = c + 1, reach * fan_in
    return c


def _log2(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 0


def steps(algorithm: str, collective: str, workers: int, fan_in: int = 0) -> int:
    """Latency-bound steps of one call: ring 2(n-1) (n-1 for reduce-scatter and all-gather), tree
    2 ceil(log2 n) (up and down), INA 2C (up the C levels and back)."""
    _check(algorithm, collective)
    n = workers
    if n <= 1:
        return 0
    if algorithm == "ring":
        return 2 * (n - 1) if collective == "allreduce" else n - 1
    if algorithm == "tree":
        return 2 * _log2(n)
    return 2 * levels(n, fan_in)


def bytes_per_host(algorithm: str, collective: str, workers: int, size_bytes: float) -> float:
    """Bytes a host link carries in its busiest direction (payload only)."""
    _check(algorithm, collective)
    n, s = workers, float(size_bytes)
    if n <= 1:
        return 0.0
    if algorithm == "ring":
        return (2 if collective == "allreduce" else 1) * s * (n - 1) / n
    if algorithm == "tree":
        return 2 * s if collective == "allreduce" else 1.5 * s
    return s  # INA: S up and S down (allreduce, all-gather down; reduce-scatter up)


def _check(algorithm: str, collective: str) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    if collective not in COLLECTIVES:
        raise ValueError(f"collective must be one of {', '.join(COLLECTIVES)}, got {collective!r}")


def _switches(n: int, fan_in: int) -> list[tuple[int, bool]]:
    """Every switch of the INA tree as (children, is_root), leaves first."""
    if fan_in == 0 or fan_in >= n:
        return [(n, True)]
    out, below = [], n
    while below > 1:
        count = math.ceil(below / fan_in)
        out += [(fan_in, count == 1)] * (count - 1) + [(below - fan_in * (count - 1), count == 1)]
        below = count
    return out


def predict(algorithm: str, collective: str, config: Config, costs: Costs) -> Prediction:
    """The time of one ``collective`` by ``algorithm`` on ``config`` at ``costs``."""
    latency, bounds, loss_s, k, moved = _terms(algorithm, collective, config, costs)
    if not bounds:
        return Prediction(0.0, 0.0, 0.0, 0.0, 0, 0.0, "none")
    name = max(bounds, key=lambda b: bounds[b])
    return Prediction(latency + bounds[name] + loss_s, latency, bounds[name], loss_s, k, moved, name)


def bound(algorithm: str, collective: str, config: Config, costs: Costs, name: str) -> float:
    """One of the transfer term's bounds (link, host, switch, window, tcp-loss, cpu); 0 where it has
    none. ``host`` is one host's CPU seconds per call, ``switch`` the busiest switch's."""
    return _terms(algorithm, collective, config, costs)[1].get(name, 0.0)


def _terms(
    algorithm: str, collective: str, config: Config, costs: Costs
) -> tuple[float, dict[str, float], float, int, float]:
    """(latency, the transfer term's bounds by name, loss wait, steps, bytes per host)."""
    _check(algorithm, collective)
    n, s = config.workers, float(config.size_bytes)
    k = steps(algorithm, collective, n, config.fan_in)
    moved = bytes_per_host(algorithm, collective, n, s)
    if n <= 1:
        return 0.0, {}, 0.0, 0, 0.0
    alpha = costs.link_latency_s if config.link_latency_s is None else config.link_latency_s
    link_bytes_s = config.bandwidth_bps / 8
    if algorithm == "ina":
        return _ina(collective, config, costs, k, moved, alpha, link_bytes_s)
    # Ring and tree: TCP between neighbours, up to 2C links apart (host, switches, host): a step of
    # every host at once waits for the farthest pair.
    hops = 2 * levels(n, config.fan_in)
    step = costs.ring_step_s + hops * alpha
    latency = costs.ring_call_s + k * step
    mss = config.mtu - TCP_OVERHEAD
    segments = moved / mss
    bounds = {"link": segments * config.mtu / link_bytes_s, "host": moved * costs.ring_byte_s}
    if config.loss > 0:
        # Mathis et al.: a TCP flow's rate <= MSS / RTT * sqrt(3 / (2p)), p per segment on the path.
        p = 1 - (1 - config.loss) ** hops
        rtt = max(2 * step, 1e-6)
        bounds["tcp-loss"] = moved / (mss / rtt * math.sqrt(1.5 / p))
    # Frames forwarded by a software switch cost it as contributions do (the busiest: one leaf's hosts).
    forward = segments * (costs.switch_packet_s + mss * costs.switch_byte_s) if config.via_switch else 0.0
    if forward > 0:
        bounds["switch"] = min(n, config.fan_in or n) * forward
    if costs.cores is not None:
        bounds["cpu"] = n * (bounds["host"] + forward) / costs.cores
    return latency, bounds, 0.0, k, moved


def _ina(
    collective: str, config: Config, costs: Costs, k: int, moved: float, alpha: float, link_bytes_s: float
) -> tuple[float, dict[str, float], float, int, float]:
    n, s, p_bytes = config.workers, float(config.size_bytes), config.payload_bytes
    headers = ETH_IP_UDP + NETAGG_HEADER
    c = levels(n, config.fan_in)
    rtt = 2 * c * alpha
    latency = costs.call_s + k * alpha
    # Payload bytes each host sends and receives (docs/protocol.md, Shards: a reduce-scatter's
    # non-owners get a header alone, except below a tree's root, where every child gets the result; an
    # all-gather's non-owners send a header alone). Every host sends and receives a packet for every use.
    up = s if collective != "all_gather" else s / n
    down = s / n if collective == "reduce_scatter" and c == 1 else s
    uses = s / p_bytes
    switches = _switches(n, config.fan_in)
    # A use is repeated if any of its packets is lost: one up and one down on every link of the tree;
    # every host sends it again (no result came, or its own was lost) and every switch adds it again.
    links = n + len(switches) - 1
    p_use = 1 - (1 - config.loss) ** (2 * links)
    again = 1 + p_use
    host = again * ((up + down) * costs.host_byte_s + 2 * uses * costs.host_packet_s)
    # A switch takes a packet per child and, below the root, the parent's result too; it adds the
    # payload of each (an all-gather's: the owner's alone).
    payloads = 1 if collective == "all_gather" else None

    def per_use(packets: int) -> float:
        return again * (
            packets * costs.switch_packet_s + (payloads or packets) * p_bytes * costs.switch_byte_s
        )

    inputs = [children + (0 if root else 1) for children, root in switches]
    bounds = {
        "link": again * (max(up, down) + uses * headers) / link_bytes_s,
        "host": host,
        "switch": uses * per_use(max(inputs)),
    }
    if rtt > 0:
        bounds["window"] = uses * rtt / config.slots
    if costs.cores is not None:
        bounds["cpu"] = (n * host + uses * sum(per_use(i) for i in inputs)) / costs.cores
    # ... and waits for its repair (a timer, or a gap noticed) while the other slots go on.
    loss_s = uses * p_use * costs.loss_recovery_s / config.slots
    return latency, bounds, loss_s, k, moved
