"""One rank of every collective of protocol version 2, run as its own process (in a network namespace,
bound to the address the switch has for it), each result checked against numpy from inputs every rank
rebuilds: for tests/integration/test_bmv2.py.

    python -m tests.integration.ns_collectives --switch IP:PORT --rank R --world-size W --bind IP:PORT \
        [--worker-id I]   # in a tree: the worker's id at its leaf

Prints one JSON line: {check name: ok} and the worker's counters.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from host_agent import Worker
from netagg import verify


def inputs(rank: int, n: int, dtype: str, seed: int = 0) -> np.ndarray:
    """Rank ``rank``'s ``n`` values: int32 over ±2^20, or float32 over six decades, mixed signs."""
    g = np.random.default_rng(seed * 1000 + rank)
    if dtype == "int32":
        return g.integers(-(2**20), 2**20, n, dtype=np.int32)
    return (g.standard_normal(n) * 10.0 ** (3 - 6 * g.random(n))).astype(np.float32)


def _sum_ok(got: np.ndarray, everyone: list[np.ndarray], elements: int) -> bool:
    if got.dtype == np.int32:
        return bool(np.array_equal(got, np.sum(everyone, axis=0, dtype=np.int32)))
    bound = verify.allreduce_error_bound(everyone, got, elements)
    return bool(np.all(np.abs(got - np.sum(everyone, axis=0, dtype=np.float64)) <= bound))


def run(w: Worker, rank: int, world: int, n: int) -> dict[str, bool]:
    """allreduce (sum, max, min), reduce-scatter (sum, max), all-gather, broadcast and barrier in int32
    and float32."""
    results: dict[str, bool] = {}
    lo, hi = rank * n, (rank + 1) * n
    for dtype in ("int32", "float32"):
        everyone = [inputs(r, world * n, dtype) for r in range(world)]
        x = everyone[rank]
        results[f"allreduce sum {dtype}"] = _sum_ok(w.allreduce(x), everyone, w.elements)
        for op, fn in (("max", np.max), ("min", np.min)):
            results[f"allreduce {op} {dtype}"] = bool(np.array_equal(w.allreduce(x, op=op), fn(everyone, 0)))
        y = w.reduce_scatter(x)
        # a shard goes in chunks of ceil(n / k) elements, k = ceil(n / N) (docs/protocol.md, "Shards")
        chunk = -(-n // -(-n // w.elements))
        results[f"reduce_scatter sum {dtype}"] = y.shape == (n,) and _sum_ok(
            y, [e[lo:hi] for e in everyone], chunk
        )
        y = w.reduce_scatter(x, op="max")
        results[f"reduce_scatter max {dtype}"] = bool(np.array_equal(y, np.max(everyone, 0)[lo:hi]))
        shard = inputs(rank, n, dtype, seed=1)
        want = np.concatenate([inputs(r, n, dtype, seed=1) for r in range(world)])
        results[f"all_gather {dtype}"] = bool(np.array_equal(w.all_gather(shard), want))
        b = inputs(rank, n, dtype, seed=2)
        w.broadcast(b, root=world - 1, out=b)
        results[f"broadcast {dtype}"] = bool(np.array_equal(b, inputs(world - 1, n, dtype, seed=2)))
    w.barrier()
    results["barrier"] = True
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--switch", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--bind", required=True)
    p.add_argument("--worker-id", type=int, default=None, help="the worker's id at its switch (a tree)")
    p.add_argument("--shard", type=int, default=1000, help="elements per rank's shard")
    a = p.parse_args(argv)
    # no GSO runs: simple_switch taps the veth with pcap (README, "BMv2")
    with Worker(
        a.switch, a.rank, a.world_size, worker_id=a.worker_id, bind=a.bind, batch=False, timeout=30
    ) as w:
        report: dict[str, Any] = {"checks": run(w, a.rank, a.world_size, a.shard), "stats": w.stats.as_dict()}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
