"""The same allreduces through a relay that drops 5% each way, duplicates 1% and reorders: never wrong."""

from __future__ import annotations

import pytest

from netagg.cli.launch import run_workers
from netagg.testing import LossyRelay
from tests.integration import workers as wk

W = 4


@pytest.mark.parametrize(
    ("elements", "slots", "cases"),
    [
        (
            4096,
            16,
            [((1,), "int32"), ((3, 333), "float32"), ((1_000_003,), "int32"), ((1_000_003,), "float32")],
        ),
        (64, 64, [((5,), "float32"), ((20_000,), "int32"), ((20_000,), "float32")]),
    ],
    ids=["16KiB-packets", "switchml-256B-packets"],
)
def test_exact_under_loss_duplication_reordering(switch_factory, elements, slots, cases) -> None:
    sw = switch_factory(W, elements=elements, slots=slots)
    host, port = sw.address.rsplit(":", 1)
    with LossyRelay(("127.0.0.1", 0), (host, int(port)), loss=0.05, dup=0.01, reorder=0.02, seed=1) as relay:
        address = f"{relay.address[0]}:{relay.address[1]}"
        out = run_workers(wk.sweep, W, address, W, cases, 0, 60.0, timeout=300)
    for rank in out:
        assert all(r["ok"] for r in rank["results"]), rank["results"]
    c = relay.counters
    assert c["up_dropped"] > 0 and c["down_dropped"] > 0 and c["up_duplicated"] + c["down_duplicated"] > 0
    assert c["up_reordered"] + c["down_reordered"] > 0
    assert sum(rank["stats"]["retransmissions"] for rank in out) > 0
    stats = sw.stop()
    assert stats is not None
    assert stats["counters"]["repeats"] > 0  # duplicates and retransmissions reached the switch
