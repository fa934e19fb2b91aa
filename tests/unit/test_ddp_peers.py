"""PeerResults: a bucket's result passed between ranks through a store. The ranks are threads of this
process sharing torch's in-memory HashStore (no sockets), each with the state it would hold."""

from __future__ import annotations

import functools
import time
from typing import Any

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from host_agent.ddp_peers import PeerResults  # noqa: E402


def ranks(world: int, held: dict[int, Any]) -> list[PeerResults]:
    store = dist.PrefixStore("netagg-ddp/test/", dist.HashStore())
    return [PeerResults(store, r, world, functools.partial(held.get, r)) for r in range(world)]


def test_a_rank_that_holds_the_result_passes_it_on() -> None:
    result = torch.arange(1000, dtype=torch.float32) / 3
    peers = ranks(2, {0: (5, result)})
    try:
        out = torch.zeros(1000)
        assert peers[1].ask(5, out, timeout=10)
        torch.testing.assert_close(out, result, rtol=0, atol=0)  # the same bits
        t0 = time.monotonic()
        assert not peers[1].ask(6, torch.zeros(1000), timeout=10)  # nobody has bucket 6: told so
        assert not peers[1].ask(5, torch.zeros(999), timeout=10)  # nor a bucket of another size
        assert time.monotonic() - t0 < 5
    finally:
        for p in peers:
            p.close()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_dtype_keeps_its_bits(dtype: Any) -> None:
    result = (torch.randn(257, generator=torch.Generator().manual_seed(1)) * 1e3).to(dtype)
    peers = ranks(3, {2: (0, result)})
    try:
        out = torch.zeros(257, dtype=dtype)
        assert peers[0].ask(0, out, timeout=10)
        assert torch.equal(out.view(torch.uint8), result.view(torch.uint8))
    finally:
        for p in peers:
            p.close()


def test_when_no_other_rank_has_it_every_one_says_so() -> None:
    peers = ranks(4, {})
    try:
        t0 = time.monotonic()
        assert not peers[3].ask(2, torch.zeros(8), timeout=10)
        assert time.monotonic() - t0 < 5  # the three others answered; no waiting for the timeout
    finally:
        for p in peers:
            p.close()


def test_an_unanswered_request_gives_up_after_its_timeout() -> None:
    peers = ranks(3, {})
    peers[0].close()  # a rank that does not answer (gone)
    try:
        t0 = time.monotonic()
        assert not peers[1].ask(0, torch.zeros(8), timeout=0.5)
        assert 0.4 < time.monotonic() - t0 < 5
    finally:
        for p in peers[1:]:
            p.close()
