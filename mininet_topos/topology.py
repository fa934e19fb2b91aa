"""Topologies as data: hosts, switches, links, and the aggregation tree over the switches.

A :class:`Topology` says nothing about how it is instantiated: :mod:`mininet_topos.netns` builds it
with network namespaces and veth pairs (pyroute2), and it is what ``topology.json`` holds for the
controller and the agents. Addresses are assigned here, once: hosts 10.0.0.1.., switches (aggregators)
10.0.0.201.., all in one /24 so that every host reaches every switch at L2.

The switches are learning L2 switches without a spanning tree, so topologies are loop-free: a
leaf-spine here has one spine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["TOPOS", "Host", "Link", "Switch", "Topology", "leafspine", "star", "tree"]

SUBNET = "10.0.0"


@dataclass(frozen=True)
class Host:
    name: str
    ip: str
    mac: str
    switch: str
    """The switch the host is attached to (its aggregator)."""


@dataclass(frozen=True)
class Switch:
    name: str
    ip: str
    """The aggregator's address (workers send to ip:47000)."""
    mac: str
    parent: str | None
    """The next switch up the aggregation tree (None: the root)."""


@dataclass(frozen=True)
class Link:
    a: str
    b: str
    bandwidth_mbit: float | None = None
    delay_ms: float | None = None
    loss_percent: float = 0.0


@dataclass
class Topology:
    name: str
    hosts: list[Host] = field(default_factory=list)
    switches: list[Switch] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)

    def add_switch(self, name: str, parent: str | None = None) -> Switch:
        n = len(self.switches) + 1
        sw = Switch(name, f"{SUBNET}.{200 + n}", f"02:00:00:00:01:{n:02x}", parent)
        self.switches.append(sw)
        return sw

    def add_host(self, name: str, switch: str) -> Host:
        n = len(self.hosts) + 1
        if n > 199:
            raise ValueError("at most 199 hosts in one /24")
        host = Host(name, f"{SUBNET}.{n}", f"02:00:00:00:00:{n:02x}", switch)
        self.hosts.append(host)
        self.links.append(Link(name, switch))
        return host

    def add_link(self, a: str, b: str) -> None:
        self.links.append(Link(a, b))

    def switch(self, name: str) -> Switch:
        return next(s for s in self.switches if s.name == name)

    def children(self, name: str) -> list[str]:
        """What a switch aggregates: its hosts, then its child switches (worker ids in that order)."""
        hosts = [h.name for h in self.hosts if h.switch == name]
        return hosts + [s.name for s in self.switches if s.parent == name]

    def root(self) -> Switch:
        roots = [s for s in self.switches if s.parent is None]
        if len(roots) != 1:
            raise ValueError(f"{self.name}: expected one root switch, found {len(roots)}")
        return roots[0]

    def with_links(
        self, *, bandwidth_mbit: float | None, delay_ms: float | None, loss_percent: float
    ) -> Topology:
        """The same topology with these parameters on every link."""
        links = [Link(lk.a, lk.b, bandwidth_mbit, delay_ms, loss_percent) for lk in self.links]
        return Topology(self.name, list(self.hosts), list(self.switches), links)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def write(self, path: Path) -> Path:
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, path: Path) -> Topology:
        d = json.loads(path.read_text())
        return cls(
            d["name"],
            [Host(**h) for h in d["hosts"]],
            [Switch(**s) for s in d["switches"]],
            [Link(**lk) for lk in d["links"]],
        )


def star(hosts: int = 4) -> Topology:
    """One switch, ``hosts`` hosts."""
    t = Topology(f"star{hosts}")
    t.add_switch("s1")
    for i in range(hosts):
        t.add_host(f"h{i + 1}", "s1")
    return t


def leafspine(leaves: int = 2, hosts_per_leaf: int = 2) -> Topology:
    """``leaves`` leaf switches with ``hosts_per_leaf`` hosts each, under one spine (the root)."""
    t = Topology(f"leafspine{leaves}x{hosts_per_leaf}")
    t.add_switch("spine1")
    for leaf in range(leaves):
        name = f"leaf{leaf + 1}"
        t.add_switch(name, parent="spine1")
        t.add_link(name, "spine1")
        for h in range(hosts_per_leaf):
            t.add_host(f"h{leaf * hosts_per_leaf + h + 1}", name)
    return t


def tree(depth: int = 2, fanout: int = 2) -> Topology:
    """Mininet's TreeTopo: a complete tree of switches ``depth`` levels deep, ``fanout`` children each;
    hosts under the bottom switches."""
    if depth < 1 or fanout < 1:
        raise ValueError("depth and fanout must be >= 1")
    t = Topology(f"tree{depth}x{fanout}")
    counter = {"s": 0, "h": 0}

    def grow(parent: str | None, level: int) -> None:
        counter["s"] += 1
        name = f"s{counter['s']}"
        t.add_switch(name, parent=parent)
        if parent is not None:
            t.add_link(name, parent)
        for _ in range(fanout):
            if level == depth:
                counter["h"] += 1
                t.add_host(f"h{counter['h']}", name)
            else:
                grow(name, level + 1)

    grow(None, 1)
    return t


#: Topology names for the command line -> builders.
TOPOS: dict[str, Callable[..., Topology]] = {"star": star, "leafspine": leafspine, "tree": tree}
