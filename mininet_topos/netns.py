"""A :class:`~mininet_topos.topology.Topology` built without Mininet: one network namespace per node,
a veth pair per link (pyroute2), the Python switch as a raw-Ethernet switch node in each switch's
namespace, link loss with tc netem (or, where the kernel has no sch_netem, nftables on the hosts and
the switches' ingress loss), and commands run on hosts with ``ip netns exec``.

Everything it creates is named ``<prefix>-<node>`` (namespaces) and is deleted by :meth:`stop`,
processes first (by PID).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute, NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

from mininet_topos.topology import Topology

if TYPE_CHECKING:
    from netagg.cli.launch import SwitchProcess

__all__ = ["NetnsNetwork", "nft_loss"]

log = logging.getLogger(__name__)

MTU = 9000  # jumbo frames: a datagram of up to 2,000 elements per packet is one frame


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

    def __init__(self, topology: Topology, *, prefix: str | None = None) -> None:
        self.topo = topology
        self.prefix = prefix or f"nt{os.getpid() % 100000}"
        self.ports: dict[str, list[str]] = {n: [] for n in self.node_names()}  # node -> its interfaces
        self.peer: dict[tuple[str, str], str] = {}  # (node, interface) -> the node at the other end
        self.switch_procs: dict[str, SwitchProcess] = {}
        self.loss_mode = "none"
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
            self._loss()
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
        names = []
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
            names.append(name)

    def _loss(self) -> None:
        lossy = [lk for lk in self.topo.links if lk.loss_percent > 0 or lk.delay_ms or lk.bandwidth_mbit]
        if not lossy:
            return
        try:
            for link in lossy:
                for node, other in ((link.a, link.b), (link.b, link.a)):
                    self._netem(node, self._port_to(node, other), link)
            self.loss_mode = "netem"
        except NetlinkError as exc:
            if any(lk.delay_ms or lk.bandwidth_mbit for lk in lossy):
                raise RuntimeError(
                    f"link delay/bandwidth need tc netem, which this kernel lacks ({exc})"
                ) from None
            self.loss_mode = "nftables+ingress"
            for host in self.topo.hosts:
                percent = max(lk.loss_percent for lk in lossy if host.name in (lk.a, lk.b))
                nft_loss(self.ns(host.name), percent)

    def _netem(self, node: str, iface: str, link: object) -> None:
        kw: dict[str, object] = {}
        if getattr(link, "loss_percent", 0):
            kw["loss"] = link.loss_percent  # type: ignore[attr-defined]
        if getattr(link, "delay_ms", None):
            kw["delay"] = int(link.delay_ms * 1000)  # type: ignore[attr-defined]
        if getattr(link, "bandwidth_mbit", None):
            kw["rate"] = f"{link.bandwidth_mbit}mbit"  # type: ignore[attr-defined]
        with NetNS(self.ns(node)) as ns:
            ns.tc("add", "netem", index=ns.link_lookup(ifname=iface)[0], handle="1:", **kw)

    def _port_to(self, node: str, other: str) -> str:
        return next(i for i in self.ports[node] if self.peer[(node, i)] == other)

    # -- switches and hosts --------------------------------------------------------------------
    def start_switches(
        self, *, elements: int = 1024, slots: int | None = None, job: int = 1, ingress_loss: float = 0.0
    ) -> None:
        """Start the Python switch on every switch node, configured as the topology's aggregation tree
        for one static job of all hosts (ranks in host order)."""
        from netagg.cli.launch import SwitchProcess

        if self.loss_mode != "nftables+ingress":
            ingress_loss = 0.0
        for sw in self.topo.switches:
            role = self.topo.role(sw.name)
            extra = role.switch_flags(self.ports[sw.name])
            if ingress_loss:
                extra += ["--ingress-loss", str(ingress_loss)]
            self.switch_procs[sw.name] = SwitchProcess(
                role.workers,
                elements=elements,
                slots=slots,
                job=job,
                prefix=["ip", "netns", "exec", self.ns(sw.name)],
                extra=extra,
            )

    def worker_args(self, rank: int) -> list[str]:
        """``netagg allreduce`` flags for the host of ``rank``: its switch and worker id there (and no GSO
        runs: the switch nodes read frames with AF_PACKET, which sees a run as one oversized frame)."""
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
            "--no-batch",
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
        iface = self._port_to(node, other)
        base = Path("/sys/class/net") / iface / "statistics"
        out = {}
        for key in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
            r = self.run(node, ["cat", str(base / key)])
            out[key] = int(r.stdout.strip() or 0)
        return out

    def stop(self) -> dict[str, dict[str, Any] | None]:
        """Stop the switches (by PID) and delete every namespace; returns the switches' counters."""
        stats: dict[str, dict[str, Any] | None] = {}
        for name, proc in self.switch_procs.items():
            stats[name] = proc.stop()
        self.switch_procs = {}
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
