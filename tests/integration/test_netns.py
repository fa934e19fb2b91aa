"""The switch and 4 workers each in a network namespace, joined by veth pairs to a bridge.

Needs root and `ip netns`. Loss uses `tc netem` where the kernel has sch_netem, else an nftables rule
(tests/integration/netloss.py); with neither, that test skips and says so. Addresses are 10.77.0.0/24, only
inside namespaces this test creates and deletes by name.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from netagg.cli.launch import SwitchProcess
from tests.integration.netloss import add_loss, nft_dropped
from tests.integration.nsworkers import allreduce_in

W = 4
SUBNET = "10.77.0"
SWITCH_IP = f"{SUBNET}.1"


def _have_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    probe = f"natest-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return f"cannot create network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


_WHY = _have_netns()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_WHY is not None, reason=_WHY or "")]


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class Topo:
    """Namespaces <prefix>-br (the bridge), <prefix>-sw and <prefix>-w0..3, each host on a veth."""

    def __init__(self) -> None:
        self.prefix = f"na{os.getpid() % 100000}"
        self.bridge = f"{self.prefix}-br"
        self.hosts = [f"{self.prefix}-sw"] + [f"{self.prefix}-w{i}" for i in range(W)]

    def up(self) -> None:
        sh("ip", "netns", "add", self.bridge)
        sh("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge, "link", "set", "br0", "up")
        for i, ns in enumerate(self.hosts):
            sh("ip", "netns", "add", ns)
            outer = f"v{self.prefix[-5:]}{i}"
            sh(
                "ip",
                "link",
                "add",
                outer,
                "netns",
                self.bridge,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            sh("ip", "-n", self.bridge, "link", "set", outer, "master", "br0", "mtu", "9000", "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "mtu", "9000", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
            sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def down(self) -> None:
        for ns in [*self.hosts, self.bridge]:
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout
            for pid in pids.split():
                subprocess.run(["kill", "-9", pid], check=False)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture
def topo() -> Iterator[Topo]:
    t = Topo()
    try:
        t.up()
        yield t
    finally:
        t.down()


@pytest.mark.parametrize("multicast", [None, "239.255.77.1:47001"], ids=["unicast", "multicast"])
def test_allreduce_across_namespaces(topo: Topo, multicast: str | None) -> None:
    prefix = ["ip", "netns", "exec", topo.hosts[0]]
    with SwitchProcess(
        W, elements=2048, listen=f"{SWITCH_IP}:47000", prefix=prefix, multicast=multicast
    ) as sw:
        for dtype in ("int32", "float32"):
            for r in allreduce_in(topo.hosts[1:], f"{SWITCH_IP}:47000", 1_000_003, dtype):
                assert r["check"]["ok"], r
                assert r["check"]["repetitions"] == 2, r  # the second use of every slot too
        stats = sw.stop()
    assert stats is not None and stats["counters"]["completions"] > 0


def test_allreduce_with_5_percent_loss(topo: Topo) -> None:
    """5% loss on every worker's link (tc netem, or nftables where the kernel lacks sch_netem)."""
    how = {add_loss(ns, 5) for ns in topo.hosts[1:]}
    prefix = ["ip", "netns", "exec", topo.hosts[0]]
    with SwitchProcess(W, elements=256, listen=f"{SWITCH_IP}:47000", prefix=prefix) as sw:
        for dtype in ("int32", "float32"):
            for res in allreduce_in(topo.hosts[1:], f"{SWITCH_IP}:47000", 200_000, dtype):
                assert res["check"]["ok"], res
                assert res["check"]["repetitions"] == 2, res
                assert res["worker"]["retransmissions"] > 0
        sw.stop()
    if how == {"nftables"}:
        assert all(nft_dropped(ns) > 0 for ns in topo.hosts[1:])


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode == 0


def test_veth_ports_carry_frames_and_clean_up() -> None:
    """The raw veth ports the BMv2 tests and bench drive: frames from the switch's end come out of
    received(), frames sent out of this end do not (the kernel shows a raw socket the frames other
    sockets send on its interface), and every pair is gone after close()."""
    from switch.bmv2.veth import VethPorts

    tag = f"nv{os.getpid() % 100000}"
    frame = bytes.fromhex("02000000000102000000000288b5") + b"netagg".ljust(
        50, b"\0"
    )  # local experimental type
    with VethPorts(tag, 2) as ports:
        assert ports.ports() == {1: f"{tag}s0", 2: f"{tag}s1"}
        assert all(_link_exists(name) for pair in ports.pairs for name in pair)
        switch_end, our_end = (
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) for _ in "ab"
        )
        try:
            switch_end.bind((f"{tag}s1", 0))
            our_end.bind((f"{tag}c1", 0))
            our_end.send(frame[:12] + b"\x88\xb6" + frame[14:])  # outgoing on c1: must not come back
            switch_end.send(frame)
            time.sleep(0.2)
            assert list(ports.received(1)) == [frame]
            assert list(ports.received(0)) == []
        finally:
            switch_end.close()
            our_end.close()
    assert not any(_link_exists(f"{tag}{end}{i}") for end in "cs" for i in range(2))


def test_veth_ports_half_made_are_deleted() -> None:
    from switch.bmv2.veth import VethPorts

    tag = f"nw{os.getpid() % 100000}"
    sh("ip", "link", "add", f"{tag}c1", "type", "veth", "peer", "name", f"{tag}x1")  # in the way of pair 1
    try:
        with pytest.raises(RuntimeError, match=f"ip link add {tag}c1"):
            VethPorts(tag, 2)
        assert not _link_exists(f"{tag}c0") and not _link_exists(f"{tag}s0")
    finally:
        subprocess.run(["ip", "link", "del", f"{tag}c1"], capture_output=True, check=False)
