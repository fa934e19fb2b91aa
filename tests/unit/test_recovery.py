"""Recovery (docs/protocol.md, "Recovery"): the real engines against the real dataplane, in process, with
the switch restarted (replaced by a fresh Dataplane, which loses some of what it had queued) at any point.

Each worker runs its calls back to back, as a training loop does, through a seeded channel that loses,
duplicates and reorders, on a virtual clock. Whatever the point of the restart, every call must complete
with no call from the user and be exact (int32) or bit-identical at every worker and within the bound
(float32); in-place calls (``out=x``) too, whose inputs are overwritten chunk by chunk.
"""

from __future__ import annotations

import dataclasses
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_agent.engine import DatagramEngine, Engine, RunEngine, make_engine
from host_agent.errors import RefusedError
from host_agent.schedule import ALLREDUCE, Collective, Schedule
from host_agent.session import JobParams, Rto, Session
from netagg.protocol import MsgType, Reason, decode, refuse_packet, slot_field
from netagg.verify import allreduce_error_bound
from switch.core import Dataplane, JobConfig
from tests.unit.test_engine import datagrams, join_all, switch_outputs

JOB = 7


class Cluster:
    """W workers, each running its calls back to back, one dataplane that can be restarted, and the
    lossy channel between them."""

    def __init__(self, workers: int, slots: int, elements: int, seed: int, loss: float, dup: float) -> None:
        self.rng = random.Random(seed)
        self.loss, self.dup, self.now = loss, dup, 0.0
        self.cfg = JobConfig(JOB, workers, slots, elements)
        self.dp = self._switch()
        self.inflight: list[tuple[str, str, bytes]] = []  # (direction, worker address, datagram)
        self.sessions = join_all(self.dp, workers)
        self.restarts = 0

    def _switch(self) -> Dataplane:
        return Dataplane([self.cfg], join_refresh=1e9, clock=lambda: self.now)

    def put(self, direction: str, addr: str, data: bytes) -> None:
        if self.rng.random() < self.loss:
            return
        self.inflight.append((direction, addr, data))
        if self.rng.random() < self.dup:
            self.inflight.append((direction, addr, data))

    def restart(self) -> None:
        """The switch process is gone: its state, and some of what it had queued."""
        self.dp = self._switch()
        self.inflight = [x for x in self.inflight if x[0] == "up" or self.rng.random() < 0.5]
        self.restarts += 1

    def run(
        self,
        calls: list[list[np.ndarray]],
        *,
        batched: bool,
        in_place: bool,
        restart_at: list[int],
        kinds: list[tuple[Collective, Schedule | None]] | None = None,
    ) -> list[list[np.ndarray]]:
        """Every worker makes ``calls`` in order; the switch restarts after it has handled each of
        ``restart_at`` packets, unless some worker has begun its last call (a worker that has returned
        from a call offers its results only when it next calls, docs/protocol.md "Recovery", Limits;
        here every restart is followed by a call of every worker). ``kinds``: each call's collective
        (and schedule), for worker 0 (the others' differ in their rank); default allreduce. Returns
        each worker's results."""
        nw = len(self.sessions)
        results: list[list[np.ndarray]] = [[] for _ in range(nw)]
        engines: list[Engine | None] = [None] * nw
        arrays: list[np.ndarray | None] = [None] * nw
        nxt = [0] * nw

        def begin(w: int) -> None:
            x = calls[nxt[w]][w].copy()
            out = x if in_place else np.full_like(x, 12345)
            call, schedule = kinds[nxt[w]] if kinds else (ALLREDUCE, None)
            call = dataclasses.replace(call, rank=w)
            e = make_engine(
                self.sessions[w], x, out, 1.0, self.now, batched=batched, call=call, schedule=schedule
            )
            engines[w], arrays[w] = e, out
            nxt[w] += 1
            emit(w, e.start(self.now))

        def emit(w: int, sends) -> None:
            for d in datagrams(sends):
                self.put("up", f"w{w}", d)

        for w in range(nw):
            begin(w)
        handled = steps = 0
        while any(e is not None for e in engines):
            steps += 1
            assert steps < 100_000, "no progress"
            if not self.inflight:  # nothing on the wire: time passes to the first timer
                self.now = max(self.now, min(e.next_deadline() for e in engines if e is not None))
                for w, e in enumerate(engines):
                    if e is not None:
                        emit(w, e.on_timer(self.now))
                continue
            direction, addr, data = self.inflight.pop(self.rng.randrange(len(self.inflight)))
            self.now += 1e-5
            if direction == "up":
                handled += 1
                if handled in restart_at and all(n < len(calls) for n in nxt):
                    self.restart()
                for out, dests in switch_outputs(self.dp.handle(data, addr)):
                    for dest in dests:
                        self.put("down", dest, out)
                continue
            if addr == "evil":
                continue
            w = int(addr[1:])
            e = engines[w]
            if e is None:
                continue  # this worker has returned from its last call: nobody reads its socket
            if isinstance(e, RunEngine):
                sends = e.on_run(data, len(data), 1, 0, self.now)
            else:
                assert isinstance(e, DatagramEngine)
                one = e.on_datagram(data, len(data), self.now)
                sends = [one] if one is not None else []
            emit(w, sends + e.take_outbox())
            if e.done:
                e.finish("raise")
                held = arrays[w]
                assert held is not None
                results[w].append(held.copy())
                engines[w] = None
                if nxt[w] < len(calls):
                    begin(w)
        return results


def check(calls: list[list[np.ndarray]], results: list[list[np.ndarray]], elements: int) -> None:
    for i, inputs in enumerate(calls):
        got = [r[i] for r in results]
        if inputs[0].dtype == np.int32:
            expected = np.sum(np.stack(inputs).astype(np.int64), axis=0).astype(np.int32)  # wraps
            for g in got:
                np.testing.assert_array_equal(g, expected)
        else:
            exact = np.sum(np.stack(inputs).astype(np.float64), axis=0)
            assert np.all(np.abs(got[0] - exact) <= allreduce_error_bound(inputs, got[0], elements))
            for g in got[1:]:
                np.testing.assert_array_equal(g, got[0])  # the same bits at every worker


@settings(max_examples=int(os.environ.get("NETAGG_RECOVERY_EXAMPLES", "60")), deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    workers=st.integers(1, 4),
    sizes=st.lists(st.integers(1, 30), min_size=3, max_size=3),
    slots=st.integers(1, 4),
    loss=st.sampled_from([0.0, 0.05, 0.2]),
    dup=st.sampled_from([0.0, 0.1]),
    batched=st.booleans(),
    in_place=st.booleans(),
    dtype=st.sampled_from(["int32", "float32"]),
    restart_at=st.lists(st.integers(1, 120), min_size=1, max_size=2),
)
def test_calls_complete_exactly_whenever_the_switch_restarts(
    seed, workers, sizes, slots, loss, dup, batched, in_place, dtype, restart_at
) -> None:
    elements = 3
    rng = np.random.default_rng(seed)
    calls = []
    for size in sizes:
        if dtype == "int32":
            calls.append([rng.integers(-(2**31), 2**31, size, dtype=np.int32) for _ in range(workers)])
        else:
            scale = 10.0 ** rng.integers(-3, 4)
            calls.append([(rng.standard_normal(size) * scale).astype(np.float32) for _ in range(workers)])
    cluster = Cluster(workers, slots, elements, seed, loss, dup)
    results = cluster.run(calls, batched=batched, in_place=in_place, restart_at=restart_at)
    check(calls, results, elements)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("at", [1, 5, 9, 17, 27, 30, 40, 50, 60])
def test_a_restart_at_each_point_of_a_call_then_between_calls(batched: bool, in_place: bool, at: int) -> None:
    """Deterministic companions of the property test: 3 workers, float32, no loss; the restart lands
    at the switch's packet ``at`` (27 up-packets per 20-element call, 15 per 7-element one: the first
    call's start, middle and end, the second call, the third) and the sessions go on to a last call."""
    rng = np.random.default_rng(at)
    calls = [[rng.standard_normal(n).astype(np.float32) for _ in range(3)] for n in (20, 7, 20, 5)]
    cluster = Cluster(3, 2, 3, seed=at, loss=0.0, dup=0.0)
    results = cluster.run(calls, batched=batched, in_place=in_place, restart_at=[at])
    check(calls, results, 3)
    assert cluster.restarts == 1
    assert sum(s.stats.rejoins for s in cluster.sessions) >= 3  # every worker rejoined


def one_engine(batched: bool) -> tuple[Engine, Session]:
    params = JobParams(JOB, worker_id=1, epoch=3, slot_base=10, slots=2, elements=4, fanin=2, total_workers=2)
    session = Session(params, Rto(0.02, 0.5), switch="sw:1")
    e = make_engine(session, np.arange(10, dtype=np.int32), np.zeros(10, np.int32), 1.0, 0.0, batched=batched)
    e.start(0.0)
    return e, session


def feed(e: Engine, data: bytes) -> list:
    if isinstance(e, RunEngine):
        sends = e.on_run(data, len(data), 1, 0, 1.0)
    else:
        assert isinstance(e, DatagramEngine)
        one = e.on_datagram(data, len(data), 1.0)
        sends = [one] if one is not None else []
    return datagrams(sends + e.take_outbox())


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(
    ("reason", "detail", "message"),
    [
        (
            "count_mismatch",
            3,
            "differs from the 3 another worker sent for it: the workers called with different sizes "
            r"\(worker \d: allreduce of 10 elements, in chunks of 4\)",
        ),
        ("unknown_job", 0, r"switch sw:1 has no job 7 \(it was deleted"),
        ("wrong_source", 0, "takes worker 1's packets for job 7 from another address"),
    ],
)
def test_a_refusal_that_ends_the_call_names_its_cause(
    batched: bool, reason: str, detail: int, message: str
) -> None:
    e, _ = one_engine(batched)
    refuse = refuse_packet(Reason[reason], 3, JOB, 1, slot_field(10, 0), 0, detail)
    with pytest.raises(RefusedError, match=message) as err:
        feed(e, refuse)
    assert err.value.reason == reason


@pytest.mark.parametrize("batched", [False, True])
def test_not_joined_makes_the_worker_rejoin_and_a_late_refusal_is_ignored(batched: bool) -> None:
    e, session = one_engine(batched)
    late = refuse_packet(Reason.not_joined, 0, JOB, 1, slot_field(10, 0), 0, detail=2)  # about epoch 2
    assert feed(e, late) == [] and e.rejoin is None
    other = refuse_packet(Reason.not_joined, 0, JOB, 0, slot_field(10, 0), 0, detail=3)  # worker 0's
    assert feed(e, other) == [] and e.rejoin is None
    [join] = feed(e, refuse_packet(Reason.not_joined, 0, JOB, 1, slot_field(10, 0), 0, detail=3))
    h, words = decode(join)
    assert (h.type, h.job, h.worker) == (MsgType.JOIN, JOB, 1) and e.rejoin is not None
    assert words.tolist() == [0, 0, session.params.round] and session.stats.rejoins == 1
    # while rejoining, the timers resend the JOIN, not the contributions
    assert [decode(d)[0].type for d in datagrams(e.on_timer(100.0))] == [MsgType.JOIN]
