"""Protocol version 2 end to end: 4 worker processes and a real `netagg switch` process (started with
no flag for the collectives) run allreduce (sum, max, min), reduce-scatter, all-gather, broadcast and
barrier in float32, bfloat16, float16 and int32, each checked against numpy; the traffic each rank moves
has the shape docs/protocol.md gives; ranks that call different collectives are told so."""

from __future__ import annotations

import pytest

from netagg.cli.launch import run_workers
from tests.integration import coll_workers as cw

W = 4


@pytest.mark.parametrize(("elements", "n"), [(16370, 40_001), (64, 3_001)])
def test_every_collective_in_every_dtype(switch_factory, elements: int, n: int) -> None:
    sw = switch_factory(W, elements=elements, slots=16 if elements > 64 else 256)
    out = run_workers(cw.everything, W, sw.address, W, n, timeout=300)
    for rank, results in enumerate(out):
        traffic = results.pop("traffic")
        bad = [name for name, ok in results.items() if not ok]
        assert not bad, f"rank {rank}: {bad}"
        # Reduce-scatter of S bytes: S up, S/W down; all-gather of S/W: S/W up, S down; plus a 24-byte
        # header for every chunk each way (with or without payload); plus, on a busy machine, what
        # retransmissions sent and the repeats they were answered with (a packet each at most).
        s = traffic["size"]
        headers = s * 24 / (4 * elements)
        for op, up, down in (("rs", s, s / W), ("ag", s / W, s)):
            extra = traffic[f"{op}_retx"] * (24 + 4 * elements) + 0.02 * s  # and 2% for padding
            assert up + headers <= traffic[f"{op}_sent"] <= up + headers + extra, traffic
            assert down + headers <= traffic[f"{op}_received"] <= down + headers + extra, traffic
    stats = sw.stop()
    assert stats["counters"]["completions"] > 0
    assert not any(v for k, v in stats["drops"].items()), stats["drops"]


def test_ranks_calling_different_collectives_are_told(switch_factory) -> None:
    sw = switch_factory(W)
    errors = run_workers(cw.mismatch, W, sw.address, W, timeout=120)
    # Whichever call reached the switch first holds the use: the ranks the switch refused are told why
    # at once (naming their own call), the others waited for them and say for whom.
    refused = [e for e in errors if "called different collectives" in e]
    waited = [e for e in errors if "have not contributed (gone, or calling another collective" in e]
    assert refused and len(refused) + len(waited) == W, errors
    assert all("reduce-scatter of 4,000" in e or "allreduce of 4,000" in e for e in refused), errors
    assert sw.stop()["drops"]["op_mismatch"] > 0
