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

__all__ = ["TOPOS", "Host", "Link", "Role", "Switch", "Topology", "leafspine", "star", "tree"]

SUBNET = "10.0.0"
DATA_PORT = 47000
"""The UDP port every switch aggregates on (``netagg.protocol.DEFAULT_PORT``; written out to keep this
module free of imports: it is data)."""


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


@dataclass(frozen=True)
class Role:
    """A switch's place in the topology's aggregation tree, as every builder needs it.

    Example::

        >>> role = leafspine(2, 2).role("leaf2")
        >>> role.children, role.parent_address, role.parent_worker
        (('h3', 'h4'), '10.0.0.201:47000', 1)
        >>> role.switch_flags(["eth0", "eth1", "eth2"])[:4]
        ['--ethernet', 'eth0,eth1,eth2', '--ip', '10.0.0.203']
    """

    switch: Switch
    children: tuple[str, ...]
    """What it aggregates: its hosts, then its child switches; a child's worker id is its index here."""
    parent: Switch | None
    """The switch it sends each complete use's partial sum to (None: the root)."""
    parent_worker: int
    """Its worker id at the parent (0 at the root)."""
    total_workers: int
    """Workers of the whole job: every host of the topology."""

    @property
    def workers(self) -> int:
        """Workers of its own static job: one per child."""
        return len(self.children)

    @property
    def parent_address(self) -> str | None:
        """``IP:PORT`` of the parent's aggregator, or None at the root."""
        return f"{self.parent.ip}:{DATA_PORT}" if self.parent is not None else None

    def switch_flags(self, interfaces: list[str]) -> list[str]:
        """The ``netagg switch`` flags that make a raw-Ethernet switch node on ``interfaces`` play this
        role (with ``--workers`` = :attr:`workers`, and the job's packet size and slots, which the
        caller chooses)."""
        flags = ["--ethernet", ",".join(interfaces), "--ip", self.switch.ip, "--mac", self.switch.mac]
        return flags + self.tree_flags()

    def tree_flags(self) -> list[str]:
        """The ``netagg switch`` flags of its place in the tree alone (``--total-workers``, and
        ``--parent``/``--parent-worker`` below the root): with ``--listen IP:47000`` they make a UDP
        daemon on the switch's address play this role (a kernel bridge forwarding everything else)."""
        flags = ["--total-workers", str(self.total_workers)]
        if self.parent_address is not None:
            flags += ["--parent", self.parent_address, "--parent-worker", str(self.parent_worker)]
        return flags


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
        """The switch called ``name`` (KeyError if there is none)."""
        for s in self.switches:
            if s.name == name:
                return s
        raise KeyError(f"{self.name}: no switch {name!r}")

    def children(self, name: str) -> list[str]:
        """What a switch aggregates: its hosts, then its child switches (worker ids in that order)."""
        hosts = [h.name for h in self.hosts if h.switch == name]
        return hosts + [s.name for s in self.switches if s.parent == name]

    def worker_id(self, name: str) -> int:
        """A host's worker id at its switch, or a switch's at its parent."""
        node = next((h.switch for h in self.hosts if h.name == name), None)
        up = node if node is not None else self.switch(name).parent
        if up is None:
            raise ValueError(f"{self.name}: {name} is the root; it has no worker id")
        return self.children(up).index(name)

    def role(self, name: str) -> Role:
        """Switch ``name``'s role in the aggregation tree: one static job of every host, ranks in host
        order, aggregated along the switches' parents."""
        sw = self.switch(name)
        parent = self.switch(sw.parent) if sw.parent is not None else None
        return Role(
            switch=sw,
            children=tuple(self.children(name)),
            parent=parent,
            parent_worker=self.worker_id(name) if parent is not None else 0,
            total_workers=len(self.hosts),
        )

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

    def with_link(
        self,
        a: str,
        b: str,
        *,
        bandwidth_mbit: float | None = None,
        delay_ms: float | None = None,
        loss_percent: float = 0.0,
    ) -> Topology:
        """The same topology with these parameters on the link between ``a`` and ``b`` (either order;
        KeyError if there is none), the other links as they are."""
        ends = {a, b}
        if not any({lk.a, lk.b} == ends for lk in self.links):
            raise KeyError(f"{self.name}: no link between {a} and {b}")
        links = [
            Link(lk.a, lk.b, bandwidth_mbit, delay_ms, loss_percent) if {lk.a, lk.b} == ends else lk
            for lk in self.links
        ]
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
