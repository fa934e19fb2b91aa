"""The worker's engine (host_agent.engine) against the real switch dataplane (switch.core), in process.

No sockets: W engines and one :class:`Dataplane` exchange datagrams through a seeded channel that loses,
duplicates and reorders them, on a virtual clock (when nothing is in flight the clock jumps to the
earliest retransmission timer). Every result must be exact (int32) or within the documented bound
(float32), at every worker, over consecutive calls that reuse every slot.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_agent.engine import DatagramEngine, Engine, RunEngine, Send, make_engine
from host_agent.join import JoinHandshake
from host_agent.session import JobParams, Rto, Session
from netagg.protocol import HEADER_SIZE, MsgType, decode, pack_header, slot_field
from netagg.verify import allreduce_error_bound
from switch.core import Dataplane, JobConfig, Segments

JOB = 7


def datagrams(sends: list[Send]) -> list[bytes]:
    """What the engine's sends put on the wire, one datagram each (a GSO run split at its segments)."""
    out: list[bytes] = []
    for parts, seg in sends:
        data = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
        out.extend(data[i : i + seg] for i in range(0, len(data), seg)) if seg else out.append(data)
    return out


def switch_outputs(outs) -> list[tuple[bytes, list[str]]]:
    res: list[tuple[bytes, list[str]]] = []
    for data, dests in outs:
        if isinstance(data, Segments):
            raw = bytes(data.data)
            res.extend((raw[i : i + data.size], dests) for i in range(0, len(raw), data.size))
        else:
            res.append((bytes(data), dests))
    return res


def join_all(dp: Dataplane, workers: int) -> list[Session]:
    """Every worker's JOIN handshake through the dataplane (worker w at address "w<w>"); the last JOIN
    acks them all. Their sessions."""
    shakes = [JoinHandshake(JOB, w) for w in range(workers)]
    params: list[JobParams | None] = [None] * workers
    for w, hs in enumerate(shakes):
        for data, dests in switch_outputs(dp.handle(hs.packet, f"w{w}")):
            for dest in dests:
                i = int(dest[1:])
                params[i] = shakes[i].on_datagram(data, len(data)) or params[i]
    return [Session(p, Rto(0.02, 0.5)) for p in params if p is not None]


class Net:
    """W engines, one dataplane and the channel between them."""

    def __init__(self, workers: int, slots: int, elements: int, seed: int, loss: float, dup: float) -> None:
        self.rng = random.Random(seed)
        self.loss, self.dup, self.now = loss, dup, 0.0
        self.dp = Dataplane(
            [JobConfig(JOB, workers, slots, elements)], join_refresh=1e9, clock=lambda: self.now
        )
        self.sessions = self._join(workers)
        self.inflight: list[tuple[str, int, bytes]] = []  # (direction, worker, datagram)

    def _join(self, workers: int) -> list[Session]:
        return join_all(self.dp, workers)

    def put(self, direction: str, w: int, data: bytes) -> None:
        if self.rng.random() < self.loss:
            return
        self.inflight.append((direction, w, data))
        if self.rng.random() < self.dup:
            self.inflight.append((direction, w, data))

    def allreduce(self, inputs: list[np.ndarray], batched: bool) -> list[np.ndarray]:
        outs = [np.full_like(x, 12345) for x in inputs]
        engines: list[Engine] = [
            make_engine(s, x, o, 1.0, self.now, batched=batched)
            for s, x, o in zip(self.sessions, inputs, outs, strict=True)
        ]
        for w, e in enumerate(engines):
            for d in datagrams(e.start(self.now)):
                self.put("up", w, d)
        steps = 0
        while not all(e.done for e in engines):
            steps += 1
            assert steps < 200_000, "no progress"
            if not self.inflight:  # nothing on the wire: time passes to the first timer
                self.now = max(self.now, min(e.next_deadline() for e in engines))
                for w, e in enumerate(engines):
                    for d in datagrams(e.on_timer(self.now)):
                        self.put("up", w, d)
                continue
            direction, w, data = self.inflight.pop(self.rng.randrange(len(self.inflight)))
            self.now += 1e-5
            if direction == "up":
                for out, dests in switch_outputs(self.dp.handle(data, f"w{w}")):
                    for dest in dests:
                        self.put("down", int(dest[1:]), out)
                continue
            e = engines[w]
            if isinstance(e, RunEngine):  # a GRO run: more of the same size to the same worker, if queued
                run = [data, *self._take(w, len(data), self.rng.randrange(8))]
                sends = e.on_run(b"".join(run), len(data), len(run), 0, self.now)
            else:
                assert isinstance(e, DatagramEngine)
                nxt = e.on_datagram(data, len(data), self.now)
                sends = [nxt] if nxt is not None else []
            for d in datagrams(sends):
                self.put("up", w, d)
        for e in engines:
            e.finish("raise")
        return outs

    def _take(self, w: int, size: int, most: int) -> list[bytes]:
        got: list[bytes] = []
        for i in reversed(range(len(self.inflight))):
            d, ww, data = self.inflight[i]
            if len(got) < most and d == "down" and ww == w and len(data) == size:
                got.append(data)
                del self.inflight[i]
        return got


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    workers=st.integers(1, 5),
    size=st.integers(1, 40),
    slots=st.integers(1, 4),
    loss=st.sampled_from([0.0, 0.05, 0.3]),
    dup=st.sampled_from([0.0, 0.01, 0.2]),
    batched=st.booleans(),
    dtype=st.sampled_from(["int32", "float32"]),
)
def test_engines_against_the_dataplane_are_exact_under_loss_duplication_and_reordering(
    seed, workers, size, slots, loss, dup, batched, dtype
) -> None:
    elements = 3
    net = Net(workers, slots, elements, seed, loss, dup)
    data_rng = np.random.default_rng(seed)
    for _call in range(2):  # the second call reuses every slot (use numbers continue)
        if dtype == "int32":
            inputs = [data_rng.integers(-(2**31), 2**31, size, dtype=np.int32) for _ in range(workers)]
        else:
            inputs = [
                (data_rng.standard_normal(size) * 10.0 ** data_rng.integers(-3, 4)).astype(np.float32)
                for _ in range(workers)
            ]
        outs = net.allreduce(inputs, batched)
        if dtype == "int32":
            expected = np.sum(np.stack(inputs).astype(np.int64), axis=0).astype(
                np.int32
            )  # wraps, as int32 does
            for got in outs:
                np.testing.assert_array_equal(got, expected)
        else:
            exact = np.sum(np.stack(inputs).astype(np.float64), axis=0)
            bound = allreduce_error_bound(inputs, outs[0], elements)
            assert np.all(np.abs(outs[0] - exact) <= bound)
            for got in outs[1:]:
                np.testing.assert_array_equal(got, outs[0])  # every worker gets the same bits


# -- the receive rules, one by one -------------------------------------------------------------------
def one_worker_engine(batched: bool) -> tuple[Engine, np.ndarray, list[bytes]]:
    """A one-worker job of 2 slots x 4 elements with epoch 3, started on 8 int32 (uses 0 of slots 0, 1)."""
    params = JobParams(JOB, worker_id=0, epoch=3, slot_base=10, slots=2, elements=4, fanin=1, total_workers=1)
    out = np.zeros(8, np.int32)
    e = make_engine(
        Session(params, Rto(0.02, 0.5)), np.arange(8, dtype=np.int32), out, 1.0, 0.0, batched=batched
    )
    return e, out, datagrams(e.start(0.0))


def result(
    slot: int,
    seq: int,
    values,
    *,
    epoch: int = 3,
    job: int = JOB,
    count: int | None = None,
    mtype=MsgType.RESULT,
) -> bytes:
    v = np.asarray(values, ">i4")
    hdr = pack_header(
        mtype,
        epoch=epoch,
        job=job,
        worker=0xFFFF,
        slot=slot_field(slot, seq & 1),
        count=v.size if count is None else count,
        seq=seq,
        bitmap=1,
    )
    return hdr + v.tobytes()


def feed(e: Engine, data: bytes) -> list[bytes]:
    if isinstance(e, RunEngine):
        return datagrams(e.on_run(data, len(data), 1, 0, 1.0))
    assert isinstance(e, DatagramEngine)
    nxt = e.on_datagram(data, len(data), 1.0)
    return datagrams([nxt] if nxt is not None else [])


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(
    "why, bad",
    [
        pytest.param("another job", result(10, 0, [9, 9, 9, 9], job=JOB + 1), id="another job"),
        pytest.param("an earlier epoch", result(10, 0, [9, 9, 9, 9], epoch=2), id="an earlier epoch"),
        pytest.param("a slot outside the job", result(12, 0, [9, 9, 9, 9]), id="a slot outside the job"),
        pytest.param("a later use of the slot", result(10, 2, [9, 9, 9, 9]), id="a later use of the slot"),
        pytest.param(
            "a count other than the chunk's", result(10, 0, [9, 9, 9]), id="a count other than the chunk's"
        ),
        pytest.param(
            "a length that disagrees with count",
            result(10, 0, [9, 9, 9, 9])[:-4],
            id="a length that disagrees with count",
        ),
        pytest.param(
            "a truncated header", result(10, 0, [9, 9, 9, 9])[: HEADER_SIZE - 1], id="a truncated header"
        ),
        pytest.param(
            "a CONTRIB, not a RESULT",
            result(10, 0, [9, 9, 9, 9], mtype=MsgType.CONTRIB),
            id="a CONTRIB, not a RESULT",
        ),
    ],
)
def test_stale_or_foreign_results_are_counted_and_change_nothing(batched, why, bad) -> None:
    e, out, _ = one_worker_engine(batched)
    assert feed(e, bad) == [], why
    assert e.stats.stale == 1, why
    assert not out.any() and e.remaining == 2, why
    assert feed(e, result(10, 0, [0, 1, 2, 3])) == []  # the right one still completes slot 0 (its last use)
    assert e.remaining == 1 and out[:4].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("batched", [False, True])
def test_a_duplicate_result_is_stale_once_its_use_is_done(batched) -> None:
    e, out, _ = one_worker_engine(batched)
    feed(e, result(11, 0, [4, 5, 6, 7]))
    feed(e, result(11, 0, [40, 50, 60, 70]))  # the same use again (a resend): already taken
    assert out[4:].tolist() == [4, 5, 6, 7] and e.stats.stale == 1


@pytest.mark.parametrize("batched", [False, True])
def test_pending_names_the_missing_workers_in_the_stall_report(batched) -> None:
    e, _, _ = one_worker_engine(batched)
    feed(e, pack_header(MsgType.PENDING, epoch=3, job=JOB, slot=slot_field(10, 0), seq=0, bitmap=0b0))
    err = e.stalled("worker 0", 10.0, "127.0.0.1:47000")
    assert "waiting for workers [0]" in str(err)


@pytest.mark.parametrize("batched", [False, True])
def test_timers_resend_what_is_outstanding_with_the_retx_flag_and_back_off(batched) -> None:
    e, _, first = one_worker_engine(batched)
    assert e.on_timer(0.0) == []
    due = e.next_deadline()
    again = datagrams(e.on_timer(due))
    assert sorted(d[HEADER_SIZE:] for d in again) == sorted(d[HEADER_SIZE:] for d in first)
    assert all(decode(d)[0].flags == 1 for d in again)
    assert e.next_deadline() - due > due  # exponential back-off
    assert e.stats.retransmissions == 2


def test_a_lost_contribution_is_resent_when_a_later_use_completes_before_its_timer() -> None:
    """Fast retransmission (docs/protocol.md, "Worker rules"): one worker, 2 slots of 4 int32, 16
    elements. Slot 0's first contribution is lost; slot 1's uses complete 10 ms apart. When the result
    of a use sent later than the lost one (by more than the reordering window) comes back, the lost one
    is resent at once, long before its retransmission timer, and the call completes exactly."""
    dp = Dataplane([JobConfig(JOB, 1, 2, 4)], join_refresh=1e9)
    [session] = join_all(dp, 1)
    x = np.arange(16, dtype=np.int32)
    out = np.zeros(16, np.int32)
    e = make_engine(session, x, out, 1.0, 0.0, batched=False)
    _lost, first1 = datagrams(e.start(0.0))  # slot 0's use 0 is lost on its way up
    pending = [first1]
    now, fast_at = 0.0, None
    while not e.done:
        assert now < 0.2, "waited for the timer"
        now += 0.01
        sends: list[bytes] = []
        for up in pending:
            for data, _ in switch_outputs(dp.handle(up, "w0")):
                sends += feed_at(e, data, now)
        sends += datagrams(e.take_outbox())
        if any(decode(d)[0].slot == session.params.slot_base for d in sends) and fast_at is None:
            fast_at = now
        pending = sends
        assert now < e.next_deadline() or fast_at is not None  # no timer fired before the resend
    assert fast_at is not None and fast_at < 0.05
    assert session.stats.fast_retransmissions == 1
    e.finish("raise")
    np.testing.assert_array_equal(out, x)


def feed_at(e: Engine, data: bytes, now: float) -> list[bytes]:
    if isinstance(e, RunEngine):
        return datagrams(e.on_run(data, len(data), 1, 0, now))
    assert isinstance(e, DatagramEngine)
    nxt = e.on_datagram(data, len(data), now)
    return datagrams([nxt] if nxt is not None else [])
