"""Topologies built with namespaces (mininet_topos.netns, pyroute2) and the Python switch as a raw-
Ethernet switch node in each switch namespace: a leaf-spine of 2 leaves x 2 hosts aggregating as a
tree, ordinary traffic through the switches, and the spine links carrying one partial per leaf.

Needs root and namespaces; skips saying why otherwise. Loss uses tc netem, or where the kernel lacks
sch_netem, nftables on the hosts plus the switches' ingress loss (mininet_topos/netns.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from mininet_topos import leafspine, star, tree
from mininet_topos.netns import NetnsNetwork
from tests.integration.nsworkers import reports_of


def _why() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    return None


pytestmark = [pytest.mark.netns, pytest.mark.skipif(_why() is not None, reason=_why() or "")]


@pytest.fixture
def network(request: pytest.FixtureRequest) -> Iterator[NetnsNetwork]:
    topo = request.param
    net = NetnsNetwork(topo)
    try:
        net.start()
        yield net
    finally:
        net.stop()


def _allreduce(net: NetnsNetwork, size: int, dtype: str, repeat: int = 2, timeout: float = 120) -> list[dict]:
    """Every host runs `netagg allreduce --check`, ``repeat`` times (each slot is used again, with
    other data, by the second); returns the reports, each having checked every repetition."""
    procs = [
        net.popen(
            host.name,
            net.netagg(
                host.name,
                [
                    "allreduce",
                    *net.worker_args(r),
                    "--size",
                    str(size),
                    "--dtype",
                    dtype,
                    "--repeat",
                    str(repeat),
                    "--check",
                    "--timeout",
                    "30",
                ],
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for r, host in enumerate(net.topo.hosts)
    ]
    reports = reports_of(procs, timeout)
    for report in reports:
        assert report["check"]["repetitions"] == repeat, report
    return reports


@pytest.mark.parametrize("network", [leafspine(2, 2)], indirect=True, ids=["leafspine2x2"])
def test_leafspine_tree_exact_and_aggregates_on_the_spine_links(network: NetnsNetwork) -> None:
    net = network
    net.start_switches(elements=1024)
    for res in _allreduce(net, 1_000, "float32"):
        assert res["check"]["ok"], res
    before = {leaf: net.counters(leaf, "spine1") for leaf in ("leaf1", "leaf2")}
    size = 2_000_000  # int32 elements: S = 8 MB per host
    for res in _allreduce(net, size, "int32", repeat=1):
        assert res["check"]["ok"], res
    s_bytes = 4 * size
    for leaf in ("leaf1", "leaf2"):
        after = net.counters(leaf, "spine1")
        up = after["tx_bytes"] - before[leaf]["tx_bytes"]
        down = after["rx_bytes"] - before[leaf]["rx_bytes"]
        # one partial sum per use goes up and one result comes down: about S each way (plus the
        # 24 + 42 bytes of headers per 4 KiB packet), not S x 2 hosts
        assert s_bytes <= up < 1.1 * s_bytes, (leaf, up, s_bytes)
        assert s_bytes <= down < 1.1 * s_bytes, (leaf, down, s_bytes)
    stats = net.stop()
    spine = stats["spine1"]
    assert spine is not None and spine["counters"]["contributions"] > 0


@pytest.mark.parametrize(
    "network",
    [leafspine(2, 2).with_links(bandwidth_mbit=None, delay_ms=None, loss_percent=2)],
    indirect=True,
    ids=["loss2"],
)
def test_leafspine_tree_exact_with_loss(network: NetnsNetwork) -> None:
    net = network
    net.start_switches(elements=1024, ingress_loss=0.02)
    for dtype in ("int32", "float32"):
        for res in _allreduce(net, 300_000, dtype, timeout=300):
            assert res["check"]["ok"], res
            assert res["worker"]["retransmissions"] > 0
    stats = net.stop()
    leaves = [stats["leaf1"], stats["leaf2"]]
    assert all(s is not None for s in leaves)


@pytest.mark.parametrize("network", [leafspine(2, 2)], indirect=True, ids=["leafspine2x2"])
def test_ping_between_any_two_hosts(network: NetnsNetwork) -> None:
    if shutil.which("ping") is None:
        pytest.skip("needs ping (iputils-ping)")
    net = network
    net.start_switches()
    hosts = net.topo.hosts
    for a in hosts:
        for b in hosts:
            if a is not b:
                r = net.run(a.name, ["ping", "-c", "1", "-W", "3", b.ip])
                assert r.returncode == 0, (a.name, b.name, r.stdout + r.stderr)


@pytest.mark.parametrize("network", [star(3), tree(2, 2)], indirect=True, ids=["star3", "tree2x2"])
def test_other_topologies(network: NetnsNetwork) -> None:
    network.start_switches(elements=512)
    for res in _allreduce(network, 50_000, "int32"):
        assert res["check"]["ok"], res


def test_experiment_command_writes_json_and_plot(tmp_path) -> None:
    from mininet_topos.experiment import run_experiment

    assert run_experiment("star", {"hosts": 2}, [0.05], [0.0], tmp_path, repeat=1) == 0
    summary = json.loads((tmp_path / "experiment.json").read_text())
    [run] = summary["runs"]
    assert run["exact_or_within_bound"] and run["seconds"] > 0
    assert (tmp_path / "experiment.png").stat().st_size > 0 and (tmp_path / "topology.json").exists()
