"""Aggregation trees with Python switches as real processes on loopback: two leaf switches add their
two workers' values and send one partial sum each up to a root, which sends the total back down.

Exact results, with and without loss, duplication and reordering on every link (lossy relays between
the workers and their leaf and between each leaf and the root); the root sees one contribution per
leaf, not one per worker."""

from __future__ import annotations

import pytest

from netagg.cli.launch import run_workers
from netagg.testing import LossyRelay
from tests.integration import coll_workers as cw
from tests.integration import workers as wk

CASES = [((1,), "int32"), ((100_003,), "int32"), ((3, 40_000), "float32"), ((0,), "float32")]


def _tree(switch_factory, elements: int, impair: dict | None) -> tuple[list[str], list, list]:
    """A root and two leaves (with relays on every link when ``impair``); returns the workers' leaf
    addresses, the switches (root first) and the relays."""
    relays: list[LossyRelay] = []

    def link(address: str, seed: int) -> str:
        if impair is None:
            return address
        host, port = address.rsplit(":", 1)
        relay = LossyRelay(("127.0.0.1", 0), (host, int(port)), seed=seed, **impair).start()
        relays.append(relay)
        return f"{relay.address[0]}:{relay.address[1]}"

    root = switch_factory(2, elements=elements, extra=["--total-workers", "4"])
    leaves = [
        switch_factory(
            2,
            elements=elements,
            extra=["--total-workers", "4", "--parent", link(root.address, 10 + i), "--parent-worker", str(i)],
        )
        for i in range(2)
    ]
    return [link(leaf.address, 20 + i) for i, leaf in enumerate(leaves)], [root, *leaves], relays


@pytest.mark.parametrize("elements", [1024, 16370])
def test_tree_allreduce_exact(switch_factory, elements: int) -> None:
    addresses, switches, _ = _tree(switch_factory, elements, None)
    for rank in run_workers(wk.tree_sweep, 4, addresses, 4, CASES, timeout=180):
        assert all(r["ok"] for r in rank["results"]), rank
    root, *leaves = (sw.stop() for sw in switches)
    assert root is not None and all(leaf is not None for leaf in leaves)
    # The root added one partial per leaf and use: as many contributions as the two leaves completed.
    leaf_completions = sum(leaf["counters"]["completions"] for leaf in leaves)
    assert root["counters"]["contributions"] == leaf_completions > 0
    assert root["counters"]["completions"] * 2 == leaf_completions
    assert sum(leaf["counters"]["from_parent"] for leaf in leaves) >= leaf_completions


def test_tree_allreduce_exact_under_loss(switch_factory) -> None:
    impair = {"loss": 0.05, "dup": 0.01, "reorder": 0.02}
    addresses, switches, relays = _tree(switch_factory, 1024, impair)
    try:
        out = run_workers(wk.tree_sweep, 4, addresses, 4, CASES, timeout=300)
    finally:
        for relay in relays:
            relay.stop()
    for rank in out:
        assert all(r["ok"] for r in rank["results"]), rank
    assert sum(r.counters["up_dropped"] + r.counters["down_dropped"] for r in relays) > 0
    stats = [sw.stop() for sw in switches]
    assert all(s is not None for s in stats)
    leaves = stats[1:]
    # Losses between a leaf and the root were repaired by the leaf sending its partial again.
    assert sum(leaf["counters"].get("partials_resent", 0) for leaf in leaves) > 0


def test_every_collective_through_a_tree(switch_factory) -> None:
    """Protocol version 2 in a tree (docs/protocol.md, "Collectives"): max and min partials, all-gather
    chunks whose owner is below the other leaf (EMPTY partials), reduce-scatter results for every leaf."""
    addresses, switches, _ = _tree(switch_factory, 1024, None)
    for rank, results in enumerate(run_workers(cw.everything, 4, addresses, 4, 5_001, timeout=300)):
        traffic = results.pop("traffic")
        assert not [name for name, ok in results.items() if not ok], (rank, results)
        # Below a tree's root a reduce-scatter moves allreduce traffic: every rank gets every chunk.
        assert traffic["rs_received"] >= traffic["size"]
    root, *leaves = (sw.stop() for sw in switches)
    assert not any(root["drops"].values()) and not any(v for leaf in leaves for v in leaf["drops"].values())
