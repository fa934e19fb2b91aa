"""Topologies as data (mininet_topos.topology): shapes, addresses, the aggregation tree, JSON."""

from __future__ import annotations

import pytest

from mininet_topos import TOPOS, Link, Topology, leafspine, star, tree


def test_leafspine_shape_and_tree(tmp_path) -> None:
    t = leafspine(3, 2)
    assert [s.name for s in t.switches] == ["spine1", "leaf1", "leaf2", "leaf3"]
    assert t.root().name == "spine1" and t.children("spine1") == ["leaf1", "leaf2", "leaf3"]
    assert t.children("leaf2") == ["h3", "h4"]
    assert len(t.links) == 3 + 6 and len({h.ip for h in t.hosts} | {s.ip for s in t.switches}) == 10
    assert Topology.read(t.write(tmp_path / "topology.json")) == t


def test_tree_and_star() -> None:
    t = tree(3, 2)
    assert len(t.switches) == 7 and len(t.hosts) == 8
    assert all(len(t.children(s.name)) == 2 for s in t.switches)
    assert [s.parent for s in t.switches].count(None) == 1
    assert star(5).children("s1") == [f"h{i}" for i in range(1, 6)]
    assert set(TOPOS) == {"star", "leafspine", "tree"}
    with pytest.raises(ValueError):
        tree(0, 2)


def test_links_with_parameters() -> None:
    t = leafspine(2, 2).with_links(bandwidth_mbit=100, delay_ms=1, loss_percent=2)
    assert {(lk.bandwidth_mbit, lk.delay_ms, lk.loss_percent) for lk in t.links} == {(100, 1, 2)}


def test_roles_of_a_leafspine() -> None:
    t = leafspine(2, 2)
    spine, leaf2 = t.role("spine1"), t.role("leaf2")
    assert spine.children == ("leaf1", "leaf2") and spine.workers == 2
    assert spine.parent is None and spine.parent_address is None and spine.parent_worker == 0
    assert leaf2.children == ("h3", "h4") and leaf2.total_workers == 4
    assert leaf2.parent == t.switch("spine1") and leaf2.parent_address == "10.0.0.201:47000"
    assert leaf2.parent_worker == 1 and t.role("leaf1").parent_worker == 0
    assert [t.worker_id(h.name) for h in t.hosts] == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="root"):
        t.worker_id("spine1")
    with pytest.raises(KeyError, match="nowhere"):
        t.role("nowhere")


def test_switch_flags_of_a_role() -> None:
    t = leafspine(2, 2)
    assert t.role("leaf2").switch_flags(["eth0", "eth1", "eth2"]) == [
        "--ethernet",
        "eth0,eth1,eth2",
        "--ip",
        "10.0.0.203",
        "--mac",
        "02:00:00:00:01:03",
        "--total-workers",
        "4",
        "--parent",
        "10.0.0.201:47000",
        "--parent-worker",
        "1",
    ]
    # the root has no parent flags
    assert "--parent" not in t.role("spine1").switch_flags(["eth0", "eth1"])


def test_roles_of_a_tree_add_up() -> None:
    """Every switch's workers are its children; every non-root is a distinct worker of its parent."""
    t = tree(3, 2)
    roles = {s.name: t.role(s.name) for s in t.switches}
    assert sum(1 for r in roles.values() if r.parent is None) == 1
    for name, role in roles.items():
        assert role.workers == 2 and role.total_workers == 8
        if role.parent is not None:
            assert roles[role.parent.name].children[role.parent_worker] == name
    assert star(3).role("s1").switch_flags(["a", "b", "c"]) == [
        "--ethernet", "a,b,c", "--ip", "10.0.0.201", "--mac", "02:00:00:00:01:01", "--total-workers", "3",
    ]  # fmt: skip


def test_tree_flags_make_a_udp_daemon_play_the_role() -> None:
    t = leafspine(2, 2)
    assert t.role("leaf2").tree_flags() == [
        "--total-workers", "4", "--parent", "10.0.0.201:47000", "--parent-worker", "1",
    ]  # fmt: skip
    assert t.role("spine1").tree_flags() == ["--total-workers", "4"]


def test_with_link_sets_one_link() -> None:
    t = leafspine(2, 2).with_links(bandwidth_mbit=100, delay_ms=None, loss_percent=0)
    u = t.with_link("spine1", "leaf1", bandwidth_mbit=10, loss_percent=1)
    changed = [lk for lk in u.links if lk != Link(lk.a, lk.b, 100, None, 0)]
    assert [(lk.a, lk.b, lk.bandwidth_mbit, lk.loss_percent) for lk in changed] == [
        ("leaf1", "spine1", 10, 1)
    ]
    with pytest.raises(KeyError, match="no link between h1 and h2"):
        t.with_link("h1", "h2", bandwidth_mbit=1)


def test_link_theory_per_direction() -> None:
    """netagg: S on every link each way for allreduce, one partial per leaf up the spine link; the
    ring: 2S(W-1)/W on every link direction; reduce-scatter and all-gather as in readouts' docstring."""
    from mininet_topos.readouts import theory

    t = leafspine(2, 4)
    s = 8.0
    for a, b in (("h1", "leaf1"), ("leaf1", "h1"), ("leaf2", "spine1"), ("spine1", "leaf2")):
        assert theory(t, "netagg", "allreduce", s, a, b) == s
        assert theory(t, "gloo", "allreduce", s, a, b) == 2 * s * 7 / 8
        assert theory(t, "gloo", "reduce_scatter", s, a, b) == s * 7 / 8
        assert theory(t, "gloo", "all_gather", s, a, b) == 7 * s
    assert theory(t, "netagg", "reduce_scatter", s, "leaf1", "h1") == s / 8
    assert theory(t, "netagg", "reduce_scatter", s, "spine1", "leaf1") == 4 * s / 8
    assert theory(t, "netagg", "reduce_scatter", s, "leaf1", "spine1") == s
    assert theory(t, "netagg", "all_gather", s, "leaf1", "spine1") == 4 * s
    assert theory(t, "netagg", "all_gather", s, "spine1", "leaf1") == 8 * s
    assert theory(t, "netagg", "all_gather", s, "h3", "leaf1") == s


def test_link_report_compares_counters_with_theory() -> None:
    from mininet_topos.readouts import link_report

    t = star(2)
    before = {"h1>s1": 100, "h2>s1": 0, "s1>h1": 0, "s1>h2": 0}
    after = {"h1>s1": 100 + 2 * 1010, "h2>s1": 2 * 1000, "s1>h1": 2 * 1000, "s1>h2": 2 * 1200}
    r = link_report(t, "netagg", "allreduce", 1000, before, after, calls=2)
    assert r["per_link"]["h1>s1"] == {"bytes": 1010, "theory": 1000, "ratio": 1.01}
    assert r["host_up"] == pytest.approx(1.005) and r["host_down"] == pytest.approx(1.1)
    assert r["max_deviation"] == pytest.approx(0.2)
    assert "switch_up" not in r


def test_tbf_parameters() -> None:
    from mininet_topos.links import MIN_QUEUE_BYTES, tbf_args

    args = tbf_args(100, 9000)
    assert args[:3] == ["tbf", "rate", "100000kbit"]
    assert int(args[args.index("burst") + 1]) >= 2 * 9000  # two jumbo frames at least
    assert int(args[args.index("limit") + 1]) == MIN_QUEUE_BYTES
    assert int(tbf_args(10_000, 9000)[-1]) == int(10_000e6 / 8 * 0.1)  # 100 ms of a fast link
    with pytest.raises(ValueError, match="positive"):
        tbf_args(0, 9000)
