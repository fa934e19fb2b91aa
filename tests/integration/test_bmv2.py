"""netagg's P4 program on real BMv2: 4 hosts in network namespaces around one simple_switch, allreduces
through host_agent (exact against numpy, with and without loss), ordinary traffic, and the table driver
(:class:`switch.bmv2.Bmv2Backend`). The conformance suite against the Python switch is
tests/conformance/.

Needs p4c-bm2-ss and simple_switch (on PATH or under $NETAGG_P4_PREFIX/bin), root and `ip netns`;
skips saying which is missing otherwise. The program is compiled into build/p4/ (as `make p4` does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from switch.agent import job_config
from switch.bmv2 import Bmv2Backend, Bmv2Process, HostPort, compile_p4, find_binary
from tests.integration.netloss import add_loss, nft_dropped
from tests.integration.nsworkers import allreduce_in, reports_of

ROOT = Path(__file__).resolve().parents[2]
W = 4
SUBNET = "10.78.0"
SWITCH_IP = f"{SUBNET}.254"
SWITCH_MAC = "02:00:0a:4e:00:fe"


def _missing() -> str | None:
    for binary in ("p4c-bm2-ss", "simple_switch", "simple_switch_CLI"):
        if find_binary(binary) is None:
            return f"{binary} not found (on PATH or in $NETAGG_P4_PREFIX/bin; see README, BMv2)"
    if os.geteuid() != 0:
        return "needs root (veth pairs, namespaces, raw sockets)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    return None


_WHY = _missing()
pytestmark = [pytest.mark.bmv2, pytest.mark.skipif(_WHY is not None, reason=_WHY or "")]


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


@pytest.fixture(scope="module")
def program() -> Path:
    return compile_p4(ROOT / "p4" / "netagg.p4", ROOT / "build" / "p4")


class Hosts:
    """Namespaces <tag>h0..3, each with eth0 (10.78.0.i+1) on a veth whose other end is a BMv2 port."""

    def __init__(self) -> None:
        self.tag = f"nb{os.getpid() % 10000}"
        self.names = [f"{self.tag}h{i}" for i in range(W)]
        self.ports = {i + 1: f"{self.tag}s{i}" for i in range(W)}
        self.hosts = [HostPort(f"{SUBNET}.{i + 1}", f"02:00:0a:4e:00:{i + 1:02x}", i + 1) for i in range(W)]

    def up(self) -> None:
        for i, ns in enumerate(self.names):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", self.ports[i + 1], "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("sysctl", "-q", "-w", f"net.ipv6.conf.{self.ports[i + 1]}.disable_ipv6=1")
            sh("ip", "link", "set", self.ports[i + 1], "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "address", self.hosts[i].mac)
            sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "-n", ns, "addr", "add", f"{self.hosts[i].ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for ns in self.names:
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", ns, check=False)
        for iface in self.ports.values():
            sh("ip", "link", "del", iface, check=False)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    h = Hosts()
    try:
        h.up()
        yield h
    finally:
        h.down()


def _switch(hosts: Hosts, program: Path) -> tuple[Bmv2Process, Bmv2Backend]:
    sw = Bmv2Process(program, hosts.ports)
    args = list(sw.proc.args)  # type: ignore[arg-type]
    assert args[args.index("--log-level") + 1] == "off"  # simple_switch's default, trace, halves its rate
    return sw, Bmv2Backend(sw, SWITCH_IP, SWITCH_MAC, hosts.hosts)


def _install(agent: Bmv2Backend, job: int = 1, slots: int = 128, elements: int = 64) -> list[str]:
    from netagg.v1 import control_pb2 as pb

    addresses = [f"{h.ip}:{41000 + i}" for i, h in enumerate(agent.hosts.values())]
    agent.install(
        job_config(
            pb.InstallJobRequest(
                wire_job_id=job,
                workers=W,
                slots=slots,
                elements_per_packet=elements,
                worker_addresses=addresses,
            )
        )
    )
    return addresses


def _allreduce(hosts: Hosts, addresses: list[str], size: int, dtype: str, timeout: float = 60) -> None:
    """Every rank's allreduce is exact. Results are checked by each rank against numpy (--check)."""
    # no GSO runs: simple_switch taps the veth with pcap (README, "BMv2")
    for report in allreduce_in(
        hosts.names,
        f"{SWITCH_IP}:47000",
        size,
        dtype,
        binds=addresses,
        batch=False,
        worker_timeout=20,
        timeout=timeout,
    ):
        assert report["check"]["ok"], report


def test_allreduce_exact_through_bmv2(hosts: Hosts, program: Path) -> None:
    sw, agent = _switch(hosts, program)
    try:
        addresses = _install(agent)
        for size, dtype in ((1, "int32"), (20_000, "int32"), (12_345, "float32")):
            _allreduce(hosts, addresses, size, dtype)
        counters = agent.counters()
        assert counters["counters"]["completions"] > 0
        assert counters["drops"]["wrong_source"] == 0 and counters["drops"]["unknown_job"] == 0
    finally:
        sw.stop()


@pytest.mark.parametrize("loss", [0, 5], ids=["no-loss", "5-percent-loss"])
def test_every_collective_through_bmv2(hosts: Hosts, program: Path, loss: int) -> None:
    """Protocol version 2 on the P4 switch: allreduce (sum, max, min), reduce-scatter, all-gather,
    broadcast and barrier in int32 and float32 from one process per namespace, each result checked
    against numpy by its rank; without loss nothing is dropped, with loss the repeats (EMPTY ones, and
    a reduce-scatter's for chunks the sender does not own) are answered with what their senders got."""
    sw, agent = _switch(hosts, program)
    try:
        if loss:
            for ns in hosts.names:
                add_loss(ns, loss)
        addresses = _install(agent)
        procs = [
            subprocess.Popen(
                [
                    *("ip", "netns", "exec", ns, sys.executable, "-m", "tests.integration.ns_collectives"),
                    *("--switch", f"{SWITCH_IP}:47000", "--rank", str(rank), "--world-size", str(W)),
                    *("--bind", addresses[rank]),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for rank, ns in enumerate(hosts.names)
        ]
        for rank, report in enumerate(reports_of(procs, 300)):
            bad = [name for name, ok in report["checks"].items() if not ok]
            assert not bad and len(report["checks"]) == 15, f"rank {rank}: {bad}"
        counters = agent.counters()
        assert counters["counters"]["completions"] > 0
        if loss:
            assert counters["counters"]["results_resent"] > 0
        else:
            assert not any(counters["drops"].values()), counters["drops"]
    finally:
        sw.stop()


def test_ping_through_bmv2(hosts: Hosts, program: Path) -> None:
    if shutil.which("ping") is None:
        pytest.skip("needs ping (iputils-ping)")
    sw, _ = _switch(hosts, program)
    try:
        r = sh(
            "ip",
            "netns",
            "exec",
            hosts.names[0],
            "ping",
            "-c",
            "2",
            "-W",
            "2",
            hosts.hosts[3].ip,
            check=False,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        r = sh("ip", "netns", "exec", hosts.names[1], "ping", "-c", "1", "-W", "2", SWITCH_IP, check=False)
        # The switch answers ARP for its address but is no IP host: ICMP to it is not answered.
        neigh = sh("ip", "-n", hosts.names[1], "neigh", "show", SWITCH_IP).stdout
        assert SWITCH_MAC in neigh, neigh
    finally:
        sw.stop()


def test_allreduce_exact_with_5_percent_loss(hosts: Hosts, program: Path) -> None:
    sw, agent = _switch(hosts, program)
    try:
        how = {add_loss(ns, 5) for ns in hosts.names}
        addresses = _install(agent)
        for size, dtype in ((20_000, "int32"), (12_345, "float32")):
            _allreduce(hosts, addresses, size, dtype, timeout=180)
        if how == {"nftables"}:  # the rules did drop packets
            assert all(nft_dropped(ns) > 0 for ns in hosts.names)
        # the workers retransmitted what was lost, and the switch answered repeats
        counters = agent.counters()
        assert counters["counters"]["retransmissions"] > 0
    finally:
        sw.stop()
