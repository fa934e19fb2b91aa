"""What the DDP hook's ranks (host_agent/ddp.py) exchange when a bucket falls back.

:func:`agree` and :func:`pass_on` are collectives on the hook's gloo group: where each rank is, and a
bucket's switch result broadcast from a rank one bucket ahead to those behind.

:class:`PeerResults` passes a bucket's switch result through the process group's key-value store (the
TCPStore of ``init_process_group``) instead. The switch sends a bucket's results to every worker; if it
dies (or the path to one worker fails) in between, one rank's call returns the bucket's mean while
another's fails. The one that got it may have finished its backward pass and gone on to collectives of
its own (a metric's all_reduce, DDP's buffer broadcast), so the rank that lost the result cannot wait
for it in a collective. It asks through the store, which needs nothing from the others' main threads:
every rank runs a thread that looks for requests and answers each one, with the result if it holds that
bucket's and with "not here" otherwise. Nothing of this runs while calls succeed, but for that thread's
look at the store (one small request every ``POLL`` seconds).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from host_agent.errors import NetAggError

__all__ = ["HELD", "READY", "SEQ", "SIZE", "PeerResults", "agree", "pass_on"]

log = logging.getLogger(__name__)

POLL = 0.1
"""Seconds between the serving thread's looks at the store for a request (one small request each)."""

ASK_POLL = 0.01
"""Seconds between an asking rank's looks for the answer (only while it asks)."""


# The agreement row each rank contributes: its bucket's number and size, the number of the last bucket
# whose switch result it holds (-1: none) and whether its back-off has passed.
SEQ, SIZE, HELD, READY = range(4)


def agree(group: Any, world_size: int, row: list[int], timeout: float | None = None) -> list[list[int]]:
    """Every rank's ``row`` (an all_gather on ``group``), waiting at most ``timeout`` seconds."""
    mine = torch.tensor(row, dtype=torch.int64)
    rows = [torch.empty_like(mine) for _ in range(world_size)]
    work = dist.all_gather(rows, mine, group=group, async_op=True)
    assert work is not None
    if timeout is None:
        work.wait()
    elif not work.wait(datetime.timedelta(seconds=timeout)):  # (it raises when it times out)
        raise TimeoutError(f"the other ranks did not answer within {timeout:g}s")
    return [r.tolist() for r in rows]


def pass_on(
    group: Any,
    rows: list[list[int]],
    rank: int | None,
    seq: int,
    out: torch.Tensor,
    held: tuple[int, torch.Tensor] | None,
) -> bool:
    """Ranks at different buckets (``rows`` from :func:`agree`): the lowest rank one bucket ahead that
    holds the switch's result of the bucket the others are at broadcasts it; True at the ranks that
    received it into ``out`` (their bucket ``seq``). Raises if the ranks are further apart."""
    seqs = [row[SEQ] for row in rows]
    lo, hi = min(seqs), max(seqs)
    source = next((r for r, row in enumerate(rows) if row[SEQ] == hi and row[HELD] == lo), None)
    if hi != lo + 1 or source is None:
        raise NetAggError(
            f"the ranks are at buckets {seqs}, holding the switch's results of "
            f"{[r[HELD] for r in rows]}: they cannot agree on the gradients"
        )
    size = next(row[SIZE] for row in rows if row[SEQ] == lo)
    if seq == lo:
        buf = out
    elif rank == source:
        assert held is not None
        buf = held[1]
        if buf.numel() != size:
            raise NetAggError(f"bucket {lo} has {size} elements at the ranks behind, {buf.numel()} here")
    else:  # ahead too: it holds the same result, but DDP may be reading it; receive into a spare
        assert held is not None
        buf = torch.empty(size, dtype=held[1].dtype)
    dist.broadcast(buf, group=group, group_src=source)
    return seq == lo


class PeerResults:
    """The store side of one rank of a NetAggState: :meth:`ask` for a bucket's result, and a thread
    that answers the others' requests from ``held()`` (the last bucket number whose switch result this
    rank has, and that result)."""

    def __init__(
        self, store: Any, rank: int, world_size: int, held: Callable[[], tuple[int, torch.Tensor] | None]
    ) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self._held = held
        self._next = 1  # the next request number to answer (the store's counter starts at 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="netagg-ddp-peers", daemon=True)
        self._thread.start()

    def ask(self, seq: int, out: torch.Tensor, timeout: float) -> bool:
        """Fill ``out`` with bucket ``seq``'s switch result from a rank that has it; False when no other
        rank has it (or none answered within ``timeout`` seconds)."""
        n = self.store.add("requests", 1)
        self.store.set(f"need/{n}", f"{seq} {out.numel()} {out.element_size()} {self.rank}")
        # Looks, not a blocking wait: the store's client is shared with this rank's serving thread, which
        # a wait would hold off (and two ranks asking at once would each wait out their timeout).
        key, deadline = f"have/{n}", time.monotonic() + timeout
        while not self.store.check([key]):
            if time.monotonic() >= deadline:
                log.warning(
                    "netagg: rank %d: no rank answered for bucket %d within %g s", self.rank, seq, timeout
                )
                return False
            time.sleep(ASK_POLL)
        data = self.store.get(key)
        if not data:
            return False
        flat = out.view(-1).view(torch.uint8)
        flat.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return True

    def _serve(self) -> None:
        while not self._stop.wait(POLL):
            key = f"need/{self._next}"
            try:
                # check, not a wait with a timeout: the store logs a warning for each wait that times out
                if not self.store.check([key]):
                    continue
            except RuntimeError:  # the store is gone (the run is ending)
                continue
            n, self._next = self._next, self._next + 1
            try:
                self._answer(n, self.store.get(key).decode())
            except RuntimeError as exc:  # the store went away (the run is ending)
                log.debug("netagg: rank %d could not answer request %d: %s", self.rank, n, exc)

    def _answer(self, n: int, request: str) -> None:
        seq, size, itemsize, asker = (int(v) for v in request.split())
        if asker == self.rank:
            return
        held = self._held()
        if (
            held is not None
            and held[0] == seq
            and held[1].numel() == size
            and held[1].element_size() == itemsize
        ):
            data = held[1].detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            self.store.set(f"have/{n}", data)  # several holders write the same bytes
            log.debug("netagg: rank %d passed bucket %d's result on to rank %d", self.rank, seq, asker)
        elif self.store.add(f"none/{n}", 1) == self.world_size - 1:  # nobody else has it
            self.store.set(f"have/{n}", b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
