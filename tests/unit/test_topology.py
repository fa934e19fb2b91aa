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
