"""The topologies in Mininet with the Python switch (and BMv2, where present) as switch nodes.

Needs root, Mininet's Python package and its `mnexec` (apt-get install mininet; `make test` installs it
where it runs as root with apt); skips saying which is missing otherwise, except in CI (CI=true), where
a missing Mininet fails them: CI must run them. Each test first removes links a crashed earlier run
left behind, and stops its own network in a finally."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def _why() -> str | None:
    if importlib.util.find_spec("mininet") is None:
        return "needs Mininet's Python package (pip install mininet)"
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("mnexec") is None:
        return "needs mnexec (apt-get install mininet)"
    return None


pytestmark = pytest.mark.mininet


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    """Skip (fail in CI) without Mininet; then remove the links of this module's nodes (s1-eth1,
    leaf2-eth3, ...) that a crashed earlier run left in the root namespace: a new network could not
    create them. Not mininet.clean.cleanup() (`mn -c`): it kills every ping, controller and Mininet
    node of the machine and deletes /tmp/*.log, which other work on a shared machine may own."""
    why = _why()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the Mininet tests, but this machine {why} (make sysdeps installs it)")
        pytest.skip(why)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    for name in sorted(set(re.findall(r"^\d+: ((?:h|s|spine|leaf)\d+-eth\d+)[@:]", links, re.M))):
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)
    yield


def _allreduce(net, size: int, extra: Callable[[Any], list[str]] | None = None) -> list[dict]:
    topo = net.topo.topology
    hosts = topo.hosts
    procs = []
    for rank, h in enumerate(hosts):
        sw = topo.switch(h.switch)
        worker_id = topo.worker_id(h.name)
        cmd = [
            sys.executable,
            "-m",
            "netagg.cli",
            "allreduce",
            "--switch",
            f"{sw.ip}:47000",
            "--rank",
            str(rank),
            "--world-size",
            str(len(hosts)),
            "--worker-id",
            str(worker_id),
            "--size",
            str(size),
            "--repeat",
            "2",  # the second use of every slot, with other data, is checked too
            "--check",
            "--no-batch",
            "--timeout",
            "30",
            *(extra(h) if extra else []),
        ]
        procs.append(net.get(h.name).popen(cmd, cwd=str(Path(__file__).resolve().parents[2])))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr.decode()[-2000:]
        out.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    return out


@pytest.mark.parametrize(
    "name,kw", [("star", {"hosts": 3}), ("leafspine", {"leaves": 2, "hosts_per_leaf": 2})]
)
def test_python_switches_in_mininet(name: str, kw: dict, tmp_path: Path) -> None:
    from mininet_topos.mn import TOPOS, PythonSwitch, start_network

    net = start_network(TOPOS[name](**kw), switch=PythonSwitch, out_dir=tmp_path)
    try:
        assert net.pingAll(timeout=3) == 0.0
        for res in _allreduce(net, 100_000):
            assert res["check"]["ok"] and res["check"]["repetitions"] == 2, res
        assert json.loads((tmp_path / "topology.json").read_text())["name"].startswith(name)
    finally:
        net.stop()


def test_rate_limited_links_in_mininet(tmp_path: Path) -> None:
    """A 2-host star with every link at 20 Mbit/s (TCLink's htb on both ends): an allreduce of S bytes
    takes at least S at that rate (each host link carries S each way) and not much more."""
    from mininet_topos.mn import TOPOS, PythonSwitch, start_network

    net = start_network(TOPOS["star"](hosts=2, bw=20), switch=PythonSwitch, out_dir=tmp_path)
    try:
        size = 500_000  # float32: 2 MB, 0.8 s at 20 Mbit/s
        results = _allreduce(net, size)
        assert all(res["check"]["ok"] for res in results), results
        wire = 4 * size * 8 / 20e6
        slowest = max(res["median_s"] for res in results)
        assert wire <= slowest < 2 * wire, (slowest, wire)
        links = json.loads((tmp_path / "topology.json").read_text())["links"]
        assert {lk["bandwidth_mbit"] for lk in links} == {20}
    finally:
        net.stop()


def test_delay_without_netem_is_refused_in_mininet() -> None:
    from mininet_topos.links import LinkShapeError, netem_missing
    from mininet_topos.mn import TOPOS

    if netem_missing() is None:
        pytest.skip("this kernel has tc netem: link delay is made, not refused")
    with pytest.raises(LinkShapeError, match="delay needs tc netem"):
        TOPOS["star"](hosts=2, delay=5)


def test_bmv2_switch_in_mininet(tmp_path: Path) -> None:
    from mininet_topos.mn import TOPOS, Bmv2Switch, start_network
    from switch.bmv2 import compile_p4, find_binary

    if find_binary("simple_switch") is None or find_binary("p4c-bm2-ss") is None:
        pytest.skip("p4c-bm2-ss and simple_switch not found (on PATH or in $NETAGG_P4_PREFIX/bin)")
    root = Path(__file__).resolve().parents[2]
    json_path = compile_p4(root / "p4" / "netagg.p4", root / "build" / "p4")

    class Node(Bmv2Switch):
        def __init__(self, name: str, **params) -> None:
            super().__init__(name, json_path=str(json_path), **params)

    net = start_network(TOPOS["star"](hosts=3, elements=64), switch=Node, out_dir=tmp_path)
    try:
        assert net.pingAll(timeout=3) == 0.0
        for res in _allreduce(net, 20_000, extra=lambda h: ["--bind", f"{h.ip}:41000"]):
            assert res["check"]["ok"] and res["check"]["repetitions"] == 2, res
    finally:
        net.stop()


@pytest.mark.parametrize(
    "bmv2",
    [("spine1",), ("leaf1", "leaf2"), ("spine1", "leaf1", "leaf2")],
    ids=["bmv2-spine", "bmv2-leaves", "all-bmv2"],
)
def test_leafspine_with_bmv2(bmv2: tuple[str, ...], tmp_path: Path) -> None:
    """Leaf-spine 2 x 2 with BMv2 switches, alone or mixed with Python ones: exact."""
    from mininet_topos.mn import TOPOS, PythonSwitch, start_network
    from switch.bmv2 import compile_p4, find_binary

    if find_binary("simple_switch") is None or find_binary("p4c-bm2-ss") is None:
        pytest.skip("p4c-bm2-ss and simple_switch not found (on PATH or in $NETAGG_P4_PREFIX/bin)")
    root = Path(__file__).resolve().parents[2]
    compile_p4(root / "p4" / "netagg.p4", root / "build" / "p4")
    topo = TOPOS["leafspine"](leaves=2, hosts_per_leaf=2, elements=64, bmv2=bmv2)
    net = start_network(topo, switch=PythonSwitch, out_dir=tmp_path)
    bind = (lambda h: ["--bind", f"{h.ip}:41000"]) if "leaf1" in bmv2 else None
    try:
        assert net.pingAll(timeout=3) == 0.0
        for res in _allreduce(net, 30_000, extra=bind):
            assert res["check"]["ok"] and res["check"]["repetitions"] == 2, res
    finally:
        net.stop()


@pytest.mark.parametrize(
    "bmv2",
    [("spine1",), ("leaf1", "leaf2"), ("spine1", "leaf1", "leaf2")],
    ids=["bmv2-spine", "bmv2-leaves", "all-bmv2"],
)
def test_every_collective_through_bmv2_switches(bmv2: tuple[str, ...], tmp_path: Path) -> None:
    """Leaf-spine 2 x 2 with BMv2 switches, alone or mixed with Python ones: allreduce (sum, max, min),
    reduce-scatter (up with root 0xFF, down to every child), all-gather (EMPTY partials for chunks owned
    under the other leaf), broadcast and barrier, each rank's result checked against numpy
    (tests/integration/ns_collectives.py)."""
    from mininet_topos.mn import TOPOS, PythonSwitch, start_network
    from switch.bmv2 import compile_p4, find_binary

    if find_binary("simple_switch") is None or find_binary("p4c-bm2-ss") is None:
        pytest.skip("p4c-bm2-ss and simple_switch not found (on PATH or in $NETAGG_P4_PREFIX/bin)")
    root = Path(__file__).resolve().parents[2]
    compile_p4(root / "p4" / "netagg.p4", root / "build" / "p4")
    topo = TOPOS["leafspine"](leaves=2, hosts_per_leaf=2, elements=64, bmv2=bmv2)
    net = start_network(topo, switch=PythonSwitch, out_dir=tmp_path)
    try:
        hosts = net.topo.topology.hosts
        procs = [
            net.get(h.name).popen(
                [
                    *(sys.executable, "-m", "tests.integration.ns_collectives"),
                    *("--switch", f"{net.topo.topology.switch(h.switch).ip}:47000", "--rank", str(rank)),
                    *(
                        "--world-size",
                        str(len(hosts)),
                        "--worker-id",
                        str(net.topo.topology.worker_id(h.name)),
                    ),
                    *("--bind", f"{h.ip}:41000"),
                ],
                cwd=str(root),
            )
            for rank, h in enumerate(hosts)
        ]
        for rank, p in enumerate(procs):
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 0, stderr.decode()[-2000:]
            checks = json.loads(stdout.decode().strip().splitlines()[-1])["checks"]
            bad = [name for name, ok in checks.items() if not ok]
            assert not bad and len(checks) == 15, f"rank {rank}: {bad}"
    finally:
        net.stop()


@pytest.mark.parametrize(
    "bmv2", [(), ("spine1",), ("spine1", "leaf1", "leaf2")], ids=["python", "mix", "all-bmv2"]
)
def test_leafspine_with_2_percent_loss(bmv2: tuple[str, ...], tmp_path: Path) -> None:
    """2% loss on every link (TCLink, tc netem), still exact with Python, mixed and BMv2 switches. Where
    the kernel has no sch_netem, the loss is made with nftables on the hosts instead (host links only)."""
    from mininet_topos.mn import TOPOS, PythonSwitch, start_network
    from switch.bmv2 import compile_p4, find_binary
    from tests.integration.netloss import netem_missing

    if bmv2 and (find_binary("simple_switch") is None or find_binary("p4c-bm2-ss") is None):
        pytest.skip("p4c-bm2-ss and simple_switch not found (on PATH or in $NETAGG_P4_PREFIX/bin)")
    if bmv2:
        root = Path(__file__).resolve().parents[2]
        compile_p4(root / "p4" / "netagg.p4", root / "build" / "p4")
    netem = netem_missing() is None
    if not netem and shutil.which("nft") is None:
        pytest.skip("no tc netem and no nft to make loss with")
    topo = TOPOS["leafspine"](leaves=2, hosts_per_leaf=2, elements=64, bmv2=bmv2, loss=2 if netem else 0)
    net = start_network(topo, switch=PythonSwitch, out_dir=tmp_path)
    bind = (lambda h: ["--bind", f"{h.ip}:41000"]) if "leaf1" in bmv2 else None
    try:
        if not netem:
            rule = "meta l4proto udp numgen random mod 1000 < 20 counter drop"
            for host in net.topo.topology.hosts:
                node = net.get(host.name)
                node.cmd("nft add table inet loss")
                for hook in ("input", "output"):
                    node.cmd(f"nft 'add chain inet loss {hook} {{ type filter hook {hook} priority 0; }}'")
                    node.cmd(f"nft 'add rule inet loss {hook} {rule}'")  # quoted: '<' is no redirection
        results = _allreduce(net, 30_000, extra=bind)
        for res in results:
            assert res["check"]["ok"] and res["check"]["repetitions"] == 2, res
        if not netem:  # the rules did drop packets
            listing = "".join(
                net.get(h.name).cmd("nft list table inet loss") for h in net.topo.topology.hosts
            )
            assert sum(int(n) for n in re.findall(r"packets (\d+)", listing)) > 0, listing
        assert sum(res["worker"]["retransmissions"] for res in results) > 0
    finally:
        net.stop()
