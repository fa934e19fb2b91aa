"""Topologies as data (mininet_topos.topology): shapes, addresses, the aggregation tree, JSON."""

from __future__ import annotations

import pytest

from mininet_topos import TOPOS, Topology, leafspine, star, tree


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
