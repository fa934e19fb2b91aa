"""The topologies in Mininet: ``Topo`` subclasses built from the topology data, and switch node classes
for the Python switch and BMv2 (Mininet ``Switch`` subclasses that start the switch on the node's
interfaces, wait until it is ready, and stop it by PID).

    from mininet.net import Mininet
    from mininet.link import TCLink
    from mininet_topos.mn import TOPOS, PythonSwitch, start_network

    net = start_network(TOPOS["leafspine"](leaves=2, hosts_per_leaf=2), switch=PythonSwitch, out_dir=...)

Needs Mininet (``apt-get install mininet`` for ``mnexec``; the Python package is Debian's or PyPI's)
and root. Every switch runs one static job (job 1) of all hosts, aggregated along the topology's tree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mininet.node import Switch
from mininet.topo import Topo

from mininet_topos.links import LinkShapeError, netem_missing
from mininet_topos.topology import TOPOS as DATA_TOPOS
from mininet_topos.topology import Topology
from netagg.cli.launch import SwitchProcess

__all__ = [
    "BMV2_WORKER_PORT",
    "TOPOS",
    "Bmv2Switch",
    "NetaggTopo",
    "PythonSwitch",
    "nft_loss_in",
    "start_network",
]


class NetaggTopo(Topo):
    """A Mininet topology from a :class:`Topology`: hosts with their addresses, switches with their
    aggregation parameters as node options, links with their bandwidth/delay/loss (for TCLink).
    ``elements`` per packet defaults to 256: Mininet's links have a 1,500-byte MTU, and a larger
    datagram would be fragmented (a switch node aggregates whole datagrams only)."""

    def build(
        self, topology: Topology, elements: int = 256, bmv2: tuple[str, ...] = (), slots: int = 128
    ) -> None:
        """``bmv2``: names of switches to run as :class:`Bmv2Switch` (a root or single switch), the
        others being :class:`PythonSwitch` unless the network says otherwise."""
        self.topology = topology
        hosts = {h.name: h for h in topology.hosts}
        for sw in topology.switches:
            role = topology.role(sw.name)
            children = [
                (hosts[c].ip, BMV2_WORKER_PORT) if c in hosts else (topology.switch(c).ip, 47000)
                for c in role.children
            ]
            extra: dict[str, Any] = {"cls": Bmv2Switch} if sw.name in bmv2 else {}
            self.addSwitch(
                sw.name,
                agg_role=role,
                agg_children=children,
                **extra,
                agg_ip=sw.ip,
                agg_mac=sw.mac,
                agg_workers=role.workers,
                agg_total=role.total_workers,
                agg_parent=role.parent_address,
                agg_parent_worker=role.parent_worker,
                agg_elements=elements,
                agg_slots=slots,
                agg_hosts=[(h.ip, h.mac) for h in topology.hosts],
            )
        for h in topology.hosts:
            self.addHost(h.name, ip=f"{h.ip}/24", mac=h.mac)
        netem = netem_missing() is None
        for link in topology.links:
            opts: dict[str, Any] = {}
            if link.bandwidth_mbit:
                opts["bw"] = link.bandwidth_mbit  # TCLink: htb on each end's egress
            if link.delay_ms:
                if not netem:
                    raise LinkShapeError(
                        f"link delay needs tc netem, which this kernel lacks ({netem_missing()})"
                    )
                opts["delay"] = f"{link.delay_ms}ms"
            if link.loss_percent and netem:  # else start_network makes it with nftables on the hosts
                opts["loss"] = link.loss_percent
            self.addLink(link.a, link.b, **opts)


def _topo(name: str) -> type[NetaggTopo]:
    builder = DATA_TOPOS[name]

    class Named(NetaggTopo):
        def build(
            self,
            *args: Any,
            elements: int = 256,
            bmv2: tuple[str, ...] = (),
            slots: int = 128,
            loss: float = 0.0,
            bw: float | None = None,
            delay: float | None = None,
            **kw: Any,
        ) -> None:
            """``bw`` (Mbit/s), ``delay`` (ms) and ``loss`` (%) on every link."""
            topology = builder(*args, **kw)
            if loss or bw or delay:
                topology = topology.with_links(bandwidth_mbit=bw, delay_ms=delay, loss_percent=loss)
            super().build(topology, elements=elements, bmv2=bmv2, slots=slots)

    Named.__name__ = f"{name.capitalize()}Topo"
    return Named


#: Topology names -> Mininet Topo classes (the same names as mininet_topos.topology.TOPOS).
TOPOS: dict[str, type[NetaggTopo]] = {name: _topo(name) for name in DATA_TOPOS}


class PythonSwitch(Switch):
    """The Python switch as a Mininet switch node: ``netagg switch --ethernet`` on the node's ports."""

    def __init__(self, name: str, **params: Any) -> None:
        self.agg = {k: params.pop(k) for k in list(params) if k.startswith("agg_")}
        super().__init__(name, **params)
        self.proc: SwitchProcess | None = None

    def start(self, controllers: Any) -> None:
        ports = [intf.name for intf in self.intfList() if intf.name != "lo"]
        extra = self.agg["agg_role"].switch_flags(ports)
        # starts it and waits until it serves (RuntimeError with its stderr if it does not)
        self.proc = SwitchProcess(
            self.agg["agg_workers"],
            elements=self.agg["agg_elements"],
            slots=self.agg["agg_slots"],
            extra=extra,
        )

    def stop(self, deleteIntfs: bool = True) -> None:  # noqa: N803 (Mininet's name)
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        super().stop(deleteIntfs)


#: The UDP port workers bind on their host when a BMv2 node serves their static job (a P4 switch needs
#: its workers' addresses up front: `netagg allreduce --bind HOST_IP:41000`).
BMV2_WORKER_PORT = 41000


class Bmv2Switch(Switch):
    """BMv2 ``simple_switch`` with netagg's P4 program as a Mininet switch node: any node of a tree
    (root, inner, leaf), next to other BMv2 or :class:`PythonSwitch` nodes. Its SwitchAgent runs in
    this process; the static job is installed with its children's addresses (hosts' workers bind
    ``BMV2_WORKER_PORT``; switches send from 47000) and its parent's."""

    _devices = 0

    def __init__(self, name: str, json_path: str = "build/p4/netagg.json", **params: Any) -> None:
        self.agg = {k: params.pop(k) for k in list(params) if k.startswith("agg_")}
        self.json_path = Path(json_path)
        super().__init__(name, **params)
        self.bmv2: Any = None

    def start(self, controllers: Any) -> None:
        from netagg.v1 import control_pb2 as pb
        from switch.agent import job_config
        from switch.bmv2 import Bmv2Backend, Bmv2Process, HostPort

        ports = {i + 1: intf.name for i, intf in enumerate(i for i in self.intfList() if i.name != "lo")}
        Bmv2Switch._devices += 1  # each simple_switch needs its own device id (and notification socket)
        self.bmv2 = Bmv2Process(
            self.json_path, ports, device_id=os.getpid() % 1000 * 100 + Bmv2Switch._devices
        )
        # its neighbours: hosts, and Python switch nodes (their aggregator addresses) for a tree
        hosts = []
        for port, intf_name in ports.items():
            intf = self.intf(intf_name)
            peer = (intf.link.intf2 if intf.link.intf1 is intf else intf.link.intf1).node
            agg = getattr(peer, "agg", None)
            if agg is not None:
                hosts.append(HostPort(agg["agg_ip"], agg["agg_mac"], port))
            else:
                for ip, mac in self.agg["agg_hosts"]:
                    if peer.IP() == ip:
                        hosts.append(HostPort(ip, mac, port))
        backend = Bmv2Backend(self.bmv2, self.agg["agg_ip"], self.agg["agg_mac"], hosts)
        children = [f"{ip}:{port}" for ip, port in self.agg["agg_children"]]
        backend.install(
            job_config(
                pb.InstallJobRequest(
                    wire_job_id=1,
                    workers=self.agg["agg_workers"],
                    total_workers=self.agg["agg_total"],
                    slots=self.agg["agg_slots"],
                    elements_per_packet=self.agg["agg_elements"],
                    worker_addresses=children,
                    parent_address=self.agg.get("agg_parent") or "",
                    parent_worker_id=self.agg["agg_parent_worker"],
                )
            )
        )

    def stop(self, deleteIntfs: bool = True) -> None:  # noqa: N803 (Mininet's name)
        if self.bmv2 is not None:
            self.bmv2.stop()
        super().stop(deleteIntfs)


def start_network(
    topo: NetaggTopo, *, switch: type[Switch] = PythonSwitch, out_dir: Path | None = None
) -> Any:
    """Build and start ``topo`` in Mininet with ``switch`` nodes and TC links; writes topology.json
    into ``out_dir`` (default: the current folder). Returns the started ``Mininet``."""
    from mininet.link import TCLink
    from mininet.net import Mininet

    topology: Topology = topo.topology
    topology.write((out_dir or Path.cwd()) / "topology.json")
    net = Mininet(topo=topo, switch=switch, link=TCLink, controller=None, autoSetMacs=False)
    net.start()
    if netem_missing() is not None:  # loss without netem: nftables on the hosts (UDP, both ways)
        for host in topology.hosts:
            percent = max((lk.loss_percent for lk in topology.links if host.name in (lk.a, lk.b)), default=0)
            if percent:
                nft_loss_in(net.get(host.name), percent)
    return net


def nft_loss_in(node: Any, percent: float) -> None:
    """Drop ``percent`` % of the UDP datagrams in and out of a Mininet host (nftables table "loss"),
    as :func:`mininet_topos.netns.nft_loss` does in a namespace."""
    rule = f"meta l4proto udp numgen random mod 1000 < {int(percent * 10)} counter drop"
    node.cmd("nft add table inet loss")
    for hook in ("input", "output"):
        node.cmd(f"nft 'add chain inet loss {hook} {{ type filter hook {hook} priority 0; }}'")
        node.cmd(f"nft 'add rule inet loss {hook} {rule}'")  # quoted: '<' is no redirection
