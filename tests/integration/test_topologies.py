"""Topologies built with namespaces (mininet_topos.netns, pyroute2) and the Python switch as a raw-
Ethernet switch node in each switch namespace: a leaf-spine of 2 leaves x 2 hosts aggregating as a
tree, ordinary traffic through the switches, and the spine links carrying one partial per leaf.

Needs root and namespaces; skips saying why otherwise. Loss uses tc netem, or where the kernel lacks
sch_netem, nftables on the hosts plus the switches' ingress loss (mininet_topos/netns.py)."""

from __future__ import annotations

import json
import os
import re
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
    """netagg alone on a 2-host star with unlimited links, the older call form."""
    from mininet_topos.experiment import ExperimentOptions, run_experiment

    opts = ExperimentOptions(sizes_mib=(0.05,), repeat=1, baseline=False, tcp_bytes=1_000_000)
    assert run_experiment("star", {"hosts": 2}, out_dir=tmp_path, options=opts) == 0
    summary = json.loads((tmp_path / "experiment.json").read_text())
    [run] = summary["runs"]
    assert run["netagg"]["ok"] and run["netagg"]["checked"] == [0, 1] and run["netagg"]["seconds"] > 0
    assert "ring" not in run
    assert (tmp_path / "experiment.png").stat().st_size > 0 and (tmp_path / "topology.json").exists()


def test_rate_limit_holds_for_tcp_and_netagg() -> None:
    """Links at 20 Mbit/s (tbf on both ends): plain TCP gets 85-101% of it; netagg's allreduce of S
    bytes takes at least S at that rate (each host link carries S each way), and not much more."""
    from mininet_topos.experiment import tcp_check

    topo = star(2).with_links(bandwidth_mbit=20, delay_ms=None, loss_percent=0)
    with NetnsNetwork(topo, forwarding="bridge") as net:
        assert net.shaping == {"tbf"}
        # a window of 16 packets of 8 KB queues 51 ms at this rate: below the retransmission timeout
        net.start_switches(elements=2000, slots=16)
        check = tcp_check(net, 5_000_000)
        assert check["flows"] == ["h1->h2"]
        assert 0.85 * 20 <= check["slowest_mbit_per_s"] <= 1.01 * 20, check
        size = 1_000_000  # 4 MB: 1.6 s at 20 Mbit/s
        reports = _allreduce(net, size, "float32", repeat=1)
        wire = 4 * size * 8 / 20e6
        slowest = max(r["median_s"] for r in reports)
        assert wire <= slowest < 1.6 * wire, (slowest, wire)


def test_delay_needs_netem() -> None:
    """Where the kernel has no sch_netem, a link delay is refused saying so (and nothing is left
    behind); where it has, the links get netem."""
    from mininet_topos.links import LinkShapeError, netem_missing

    net = NetnsNetwork(star(2).with_links(bandwidth_mbit=None, delay_ms=5, loss_percent=0))
    if netem_missing() is None:
        with net:
            assert net.shaping == {"netem"}
        return
    with pytest.raises(LinkShapeError, match="delay needs tc netem"):
        net.start()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert net.prefix not in left


def test_ring_baseline_and_link_bytes_against_theory(tmp_path) -> None:
    """A 2 x 2 leaf-spine at 50 Mbit/s with kernel bridges: netagg and gloo's ring on the same hosts,
    both results checked against numpy, and every link direction's bytes within 10% of the theory
    for both (host links S each way for netagg, 2S(W-1)/W for the ring; spine links one partial per
    leaf); the TCP check recorded."""
    from mininet_topos.experiment import ExperimentOptions, run_experiment

    opts = ExperimentOptions(sizes_mib=(1,), bandwidths=(50,), repeat=2, tcp_bytes=2_000_000)
    assert (
        run_experiment("leafspine", {"leaves": 2, "hosts_per_leaf": 2}, out_dir=tmp_path, options=opts) == 0
    )
    summary = json.loads((tmp_path / "experiment.json").read_text())
    [check] = summary["tcp_checks"]
    # 2 MB flows on a shared machine (slow start, scheduling): the bridges forward more than half the
    # link rate to every flow at once; the 8-host runs of docs/experiments.md reach 92-98%.
    assert check["forwarding"] == "bridge" and check["of_link"] > 0.5, check
    [run] = summary["runs"]
    for impl in ("netagg", "ring"):
        result = run[impl]
        assert result["ok"] and result["checked"] == [0, 3], (impl, result)
        links = result["links"]
        assert links["max_deviation"] < 0.1, (impl, links)
        assert set(links) >= {"host_up", "host_down", "switch_up", "switch_down"}
        assert len(links["per_link"]) == 2 * 6  # 4 host links and 2 spine links, each way
    w = 4
    s = 4 * run["elements"]
    assert run["netagg"]["links"]["per_link"]["h1>leaf1"]["theory"] == s
    assert run["ring"]["links"]["per_link"]["leaf1>spine1"]["theory"] == round(2 * s * (w - 1) / w)
    assert run["speedup"] > 0


def test_bridge_loss_without_netem() -> None:
    """Loss on bridged links: netem where the kernel has it, else nftables rules in the bridge that drop
    frames of every kind (TCP too); netagg stays exact and retransmits."""
    topo = star(2).with_links(bandwidth_mbit=None, delay_ms=None, loss_percent=3)
    net = NetnsNetwork(topo, forwarding="bridge")
    with net:
        assert net.loss_mode in ("netem", "nftables-bridge")
        net.start_switches(elements=1024)
        reports = _allreduce(net, 200_000, "float32", timeout=300)
        for res in reports:
            assert res["check"]["ok"], res
        assert sum(res["worker"]["retransmissions"] for res in reports) > 0
        if net.loss_mode == "nftables-bridge":
            listing = net.run("s1", ["nft", "list", "table", "bridge", "loss"]).stdout
            assert sum(int(n) for n in re.findall(r"packets (\d+)", listing)) > 0, listing
