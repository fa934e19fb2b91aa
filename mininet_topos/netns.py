"""A :class:`~mininet_topos.topology.Topology` built without Mininet: one network namespace per node,
a veth pair per link (pyroute2), links shaped by :mod:`mininet_topos.links` (tbf rate limits on both
ends, netem delay and loss where the kernel has it, else loss with nftables), and commands run on hosts
with ``ip netns exec``. Two ways to make a switch node (``forwarding``):

- ``"python"``: the Python switch as a raw-Ethernet switch node (``netagg switch --ethernet``) on the
  node's ports: it aggregates, and forwards everything else (ARP, TCP) in Python.
- ``"bridge"``: a kernel bridge over the node's ports forwards everything, and ``netagg switch`` runs as
  a UDP daemon on the bridge's address (the switch's IP): what baselines over TCP need, so that the
  forwarding of their traffic is not the Python loop's.

Everything it creates is named ``<prefix>-<node>`` (namespaces) and is deleted by :meth:`stop`,
processes first (by PID).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute, NetNS, netns

from mininet_topos.links import bridge_loss, netem_missing, shape
from mininet_topos.topology import Link, Topology

if TYPE_CHECKING:
    from netagg.cli.launch import SwitchProcess

__all__ = ["FORWARDING", "NetnsNetwork", "nft_loss"]

log = logging.getLogger(__name__)

MTU = 9000  # jumbo frames: a datagram of up to 2,000 elements per packet is one frame
FORWARDING = ("python", "bridge")
"""How switch nodes forward what they do not aggregate (see the module's docstring)."""


def nft_loss(namespace: str, percent: float) -> None:
    """Drop ``percent`` % of the UDP datagrams in and out of ``namespace`` with nftables (loss where the
    kernel has no sch_netem; a sender sees a local drop as EPERM, which the host agent takes as a lost
    datagram). The table is named "loss"; it goes with the namespace."""
    rule = [
        "meta",
        "l4proto",
        "udp",
        "numgen",
        "random",
        "mod",
        "1000",
        "<",
        str(int(percent * 10)),
        "counter",
        "drop",
    ]
    cmds = [["add", "table", "inet", "loss"]]
    for hook in ("input", "output"):
        cmds.append(["add", "chain", "inet", "loss", hook, f"{{ type filter hook {hook} priority 0; }}"])
        cmds.append(["add", "rule", "inet", "loss", hook, *rule])
    for cmd in cmds:
        subprocess.run(["ip", "netns", "exec", namespace, "nft", *cmd], check=True, capture_output=True)


class NetnsNetwork:
    """Instantiate ``topology`` in namespaces; a context manager (``start`` / ``stop``)."""

    def __init__(self, topology: Topology, *, prefix: str | None = None, forwarding: str = "python") -> None:
        if forwarding not in FORWARDING:
            raise ValueError(f"forwarding must be one of {FORWARDING}, got {forwarding!r}")
        self.topo = topology
        self.forwarding = forwarding
        self.prefix = prefix or f"nt{os.getpid() % 100000}"
        self.ports: dict[str, list[str]] = {n: [] for n in self.node_names()}  # node -> its interfaces
        self.peer: dict[tuple[str, str], str] = {}  # (node, interface) -> the node at the other end
        self.switch_procs: dict[str, SwitchProcess] = {}
        self.loss_mode = "none"
        """How link loss is made: "none", "netem", "nftables+ingress" (python forwarding without netem:
        UDP on the hosts, every frame at the switch nodes) or "nftables-bridge" (bridges without netem:
        every frame, TCP too)."""
        self.shaping: set[str] = set()
        """What shapes the links' egress: {"tbf"}, {"netem"}, {"netem+tbf"}, or empty."""
        self._created: list[str] = []

    def node_names(self) -> list[str]:
        return [h.name for h in self.topo.hosts] + [s.name for s in self.topo.switches]

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    # -- building ------------------------------------------------------------------------------
    def start(self) -> NetnsNetwork:
        try:
            for node in self.node_names():
                netns.create(self.ns(node))
                self._created.append(self.ns(node))
                with NetNS(self.ns(node)) as ns:
                    ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                self._sysctl(node, "net.ipv6.conf.all.disable_ipv6=1")
            for k, link in enumerate(self.topo.links):
                self._link(k, link.a, link.b)
            for host in self.topo.hosts:
                with NetNS(self.ns(host.name)) as ns:
                    idx = ns.link_lookup(ifname="eth0")[0]
                    ns.link("set", index=idx, address=host.mac)
                    ns.addr("add", index=idx, address=host.ip, prefixlen=24)
            if self.forwarding == "bridge":
                for sw in self.topo.switches:
                    self._bridge(sw.name, sw.ip, sw.mac)
            else:
                self._offloads_off()
            self._shape()
        except BaseException:
            self.stop()
            raise
        return self

    def _sysctl(self, node: str, setting: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.ns(node), "sysctl", "-q", "-w", setting],
            check=False,
            capture_output=True,
        )

    def _link(self, k: int, a: str, b: str) -> None:
        tmp_a, tmp_b = f"{self.prefix[:6]}{k}a", f"{self.prefix[:6]}{k}b"
        with IPRoute() as ipr:
            ipr.link("add", ifname=tmp_a, kind="veth", peer={"ifname": tmp_b})
            for tmp, node in ((tmp_a, a), (tmp_b, b)):
                ipr.link("set", index=ipr.link_lookup(ifname=tmp)[0], net_ns_fd=self.ns(node))
        for tmp, node, other in ((tmp_a, a, b), (tmp_b, b, a)):
            name = f"eth{len(self.ports[node])}"
            with NetNS(self.ns(node)) as ns:
                idx = ns.link_lookup(ifname=tmp)[0]
                ns.link("set", index=idx, ifname=name, mtu=MTU)
                ns.link("set", index=idx, state="up")
            self.ports[node].append(name)
            self.peer[(node, name)] = other

    def _bridge(self, node: str, ip: str, mac: str) -> None:
        """A kernel bridge "br0" over every port of ``node`` (no STP: the topologies are loop-free),
        holding the switch's address, for the UDP daemon to listen on."""
        with NetNS(self.ns(node)) as ns:
            ns.link("add", ifname="br0", kind="bridge", br_stp_state=0, br_forward_delay=0)
            br = ns.link_lookup(ifname="br0")[0]
            for port in self.ports[node]:
                ns.link("set", index=ns.link_lookup(ifname=port)[0], master=br)
            ns.link("set", index=br, address=mac, mtu=MTU)
            ns.addr("add", index=br, address=ip, prefixlen=24)
            ns.link("set", index=br, state="up")

    def _offloads_off(self) -> None:
        """Raw-Ethernet switch nodes pass frames on as they read them, and a veth hands a frame with
        its TCP checksum not yet filled in (checksum offload) or as one 64 KB segment (TSO) to a raw
        socket: TCP across them gets nowhere unless every port computes checksums and segments in
        software (ethtool; without it TCP between hosts fails, UDP to the switches works)."""
        if shutil.which("ethtool") is None:
            log.warning("no ethtool: TCP between hosts will not cross raw-Ethernet switch nodes")
            return
        for node in self.node_names():
            for port in self.ports[node]:
                self.run(node, ["ethtool", "-K", port, "tx", "off", "tso", "off", "gso", "off", "gro", "off"])

    def _shape(self) -> None:
        """Rate, delay and loss on each end's egress (:func:`mininet_topos.links.shape`); loss that
        netem cannot make here is made with nftables instead."""
        shaped = [lk for lk in self.topo.links if lk.loss_percent > 0 or lk.delay_ms or lk.bandwidth_mbit]
        for link in shaped:
            for node, other in ((link.a, link.b), (link.b, link.a)):
                how = shape(
                    self.ns(node),
                    self._port_to(node, other),
                    bandwidth_mbit=link.bandwidth_mbit,
                    delay_ms=link.delay_ms,
                    loss_percent=link.loss_percent,
                    mtu=MTU,
                )
                if how:
                    self.shaping.add(how)
        lossy = [lk for lk in shaped if lk.loss_percent > 0]
        if not lossy:
            return
        if netem_missing() is None:
            self.loss_mode = "netem"
        elif self.forwarding == "bridge":
            self.loss_mode = "nftables-bridge"
            hosts = {h.name for h in self.topo.hosts}
            for sw in self.topo.switches:
                ports = [
                    (
                        port,
                        self._link_between(sw.name, self.peer[(sw.name, port)]).loss_percent,
                        self.peer[(sw.name, port)] in hosts,
                    )
                    for port in self.ports[sw.name]
                ]
                bridge_loss(self.ns(sw.name), ports)
        else:
            self.loss_mode = "nftables+ingress"
            for host in self.topo.hosts:
                percent = max(lk.loss_percent for lk in lossy if host.name in (lk.a, lk.b))
                nft_loss(self.ns(host.name), percent)

    def _link_between(self, a: str, b: str) -> Link:
        return next(lk for lk in self.topo.links if {lk.a, lk.b} == {a, b})

    def _port_to(self, node: str, other: str) -> str:
        return next(i for i in self.ports[node] if self.peer[(node, i)] == other)

    # -- switches and hosts --------------------------------------------------------------------
    def start_switches(
        self, *, elements: int = 1024, slots: int | None = None, job: int = 1, ingress_loss: float = 0.0
    ) -> None:
        """Start the Python switch on every switch node, configured as the topology's aggregation tree
        for one static job of all hosts (ranks in host order): a raw-Ethernet switch node on its ports,
        or with bridges a UDP daemon on the switch's address. ``ingress_loss`` (a fraction) applies to
        raw-Ethernet nodes when the links' loss is made with nftables (they see frames nftables on the
        hosts cannot)."""
        from netagg.cli.launch import SwitchProcess

        if self.loss_mode != "nftables+ingress":
            ingress_loss = 0.0
        for sw in self.topo.switches:
            role = self.topo.role(sw.name)
            listen = "127.0.0.1:0"
            if self.forwarding == "bridge":
                listen, extra = f"{sw.ip}:47000", role.tree_flags()
            else:
                extra = role.switch_flags(self.ports[sw.name])
            if ingress_loss:
                extra += ["--ingress-loss", str(ingress_loss)]
            self.switch_procs[sw.name] = SwitchProcess(
                role.workers,
                elements=elements,
                slots=slots,
                job=job,
                listen=listen,
                prefix=["ip", "netns", "exec", self.ns(sw.name)],
                extra=extra,
            )

    def stop_switches(self) -> dict[str, dict[str, Any] | None]:
        """Stop the switches (by PID); returns their counters."""
        stats = {name: proc.stop() for name, proc in self.switch_procs.items()}
        self.switch_procs = {}
        return stats

    def worker_args(self, rank: int) -> list[str]:
        """``netagg allreduce`` flags for the host of ``rank``: its switch and worker id there (and, with
        raw-Ethernet switch nodes, no GSO runs: they read frames with AF_PACKET, which sees a run as
        one oversized frame)."""
        host = self.topo.hosts[rank]
        sw = self.topo.switch(host.switch)
        return [
            "--switch",
            f"{sw.ip}:47000",
            "--rank",
            str(rank),
            "--world-size",
            str(len(self.topo.hosts)),
            "--worker-id",
            str(self.topo.worker_id(host.name)),
            *(["--no-batch"] if self.forwarding == "python" else []),
        ]

    def popen(self, node: str, cmd: Sequence[str], **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns(node), *cmd], text=True, **kw)  # type: ignore[call-overload]

    def run(self, node: str, cmd: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(node), *cmd],
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def netagg(self, node: str, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "netagg.cli", *args]

    def counters(self, node: str, other: str) -> dict[str, int]:
        """Bytes and packets sent and received on ``node``'s interface toward ``other``."""
        return self._read_counters(node, [self._port_to(node, other)])[0]

    def _read_counters(self, node: str, ifaces: Sequence[str]) -> list[dict[str, int]]:
        keys = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
        paths = [f"/sys/class/net/{i}/statistics/{k}" for i in ifaces for k in keys]
        r = self.run(node, ["cat", *paths])
        values = [int(v) for v in r.stdout.split()]
        if len(values) != len(paths):
            raise RuntimeError(f"could not read the counters of {node}: {r.stderr.strip()}")
        return [dict(zip(keys, values[4 * k : 4 * k + 4], strict=True)) for k in range(len(ifaces))]

    def link_bytes(self) -> dict[str, int]:
        """Bytes each link has carried so far in each direction, ``"a>b"`` -> bytes, read on the
        sending end's interface (tx_bytes): one reading of every node's counters."""
        out: dict[str, int] = {}
        for node in self.node_names():
            ifaces = self.ports[node]
            for iface, c in zip(ifaces, self._read_counters(node, ifaces), strict=True):
                out[f"{node}>{self.peer[(node, iface)]}"] = c["tx_bytes"]
        return out

    def stop(self) -> dict[str, dict[str, Any] | None]:
        """Stop the switches (by PID) and delete every namespace; returns the switches' counters."""
        stats = self.stop_switches()
        for name in self._created:
            pids = subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
            ).stdout
            for pid in pids.split():
                subprocess.run(["kill", "-9", pid], check=False, capture_output=True)
            try:
                netns.remove(name)
            except OSError as exc:
                log.warning("could not remove namespace %s: %s", name, exc)
        self._created = []
        return stats

    def __enter__(self) -> NetnsNetwork:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
