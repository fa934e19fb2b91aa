"""NetAggState's bookkeeping for one rank, without sockets: which way each bucket goes, when the switch
is tried again, what is logged and what summary() says. The switch is replaced here, and only here, by a
Worker-like object whose calls fail on demand (the real ones are in tests/integration/test_ddp*.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from host_agent.ddp import RETRY_JOIN_TIMEOUT, NetAggState  # noqa: E402
from host_agent.errors import ControllerError, NetAggTimeout, RefusedError  # noqa: E402

LOGGER = "host_agent.ddp"


class Switch:
    """Makes the state's workers. ``down``: joins fail; ``fail_calls``: that many calls fail."""

    def __init__(self) -> None:
        self.down = False
        self.fail_calls = 0
        self.made: list[dict[str, Any]] = []
        self.closed = 0

    def __call__(self, switch: Any, rank: int, world_size: int, **kwargs: Any) -> FakeWorker:
        self.made.append(kwargs)
        if self.down:
            raise NetAggTimeout(f"switch {switch} did not answer JOIN")
        return FakeWorker(self)


class FakeWorker:
    switch = ("127.0.0.1", 47000)

    def __init__(self, owner: Switch) -> None:
        self.owner = owner
        self.calls = 0

        class _Stats:
            def as_dict(self) -> dict[str, int]:
                return {"sent": 0}

        self.stats = _Stats()

    def allreduce(self, x: Any, out: Any, *, average: bool) -> Any:
        assert average and out is not x
        self.calls += 1
        if self.owner.down or self.owner.fail_calls:
            self.owner.fail_calls = max(0, self.owner.fail_calls - 1)
            raise NetAggTimeout("worker 0 made no progress for 2s")
        out.copy_(x)  # one rank: the mean is the input
        return out

    def close(self) -> None:
        self.owner.closed += 1


def make_state(**kwargs: Any) -> tuple[NetAggState, Switch, list[float]]:
    kwargs.setdefault("switch", "127.0.0.1:47000")
    state = NetAggState(rank=0, world_size=1, **kwargs)
    sw = Switch()
    clock = [100.0]
    state._make_worker = sw
    state._clock = lambda: clock[0]
    return state, sw, clock


def bucket(state: NetAggState, index: int = 0, n: int = 8) -> Any:
    x = torch.arange(n, dtype=torch.float32) + index
    out = state._allreduce_bucket(x, index)
    torch.testing.assert_close(out, torch.arange(n, dtype=torch.float32) + index, rtol=0, atol=0)
    return out


def test_a_failed_call_sends_the_bucket_through_the_process_group(caplog) -> None:
    state, sw, _ = make_state()
    caplog.set_level(logging.DEBUG, LOGGER)
    bucket(state)
    sw.fail_calls = 1
    x = torch.ones(8)
    assert state._allreduce_bucket(x, 1) is x  # through "gloo" (one rank): the bucket itself, intact
    s = state.summary()
    assert (s["buckets"], s["switch_buckets"], s["gloo_buckets"], s["fallbacks"]) == (2, 1, 1, 1)
    assert s["switch_bytes"] == s["gloo_bytes"] == 32
    assert s["causes"] == {"NetAggTimeout: worker 0 made no progress for 2s": 1}
    assert s["falling_back"] and sw.closed == 1  # the broken worker is closed
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "made no progress" in errors[0].getMessage()
    assert "bucket 1" in errors[0].getMessage() and "tried again in 1 s" in errors[0].getMessage()


def test_the_switch_is_tried_again_after_a_doubling_back_off(caplog) -> None:
    state, sw, clock = make_state(retry_after=1.0, retry_max=3.0)
    caplog.set_level(logging.DEBUG, LOGGER)
    bucket(state)
    sw.down = True
    sw.fail_calls = 1
    bucket(state, 1)  # fails: back-off 1 s
    bucket(state, 2)  # too soon: gloo, no new worker
    assert len(sw.made) == 1
    clock[0] += 1.0
    bucket(state, 3)  # a try (a new worker, which fails to join): back-off 2 s
    assert len(sw.made) == 2 and state.stats.retries == 1
    assert sw.made[1]["replace"] is True and sw.made[1]["join_timeout"] == RETRY_JOIN_TIMEOUT
    clock[0] += 1.9
    bucket(state, 4)
    assert state.stats.retries == 1
    clock[0] += 0.1
    bucket(state, 5)  # the second try fails: back-off 4 s, capped at 3
    assert state.stats.retries == 2
    clock[0] += 2.9
    bucket(state, 6)
    assert state.stats.retries == 2
    sw.down = False
    clock[0] += 0.1
    bucket(state, 7)  # the third try succeeds: through the switch again, and so on
    bucket(state, 8)
    s = state.summary()
    assert (s["retries"], s["returns"], s["fallbacks"]) == (3, 1, 3)
    assert (s["switch_buckets"], s["gloo_buckets"]) == (3, 6) and not s["falling_back"]
    assert len(sw.made) == 4
    assert s["causes"] == {
        "NetAggTimeout: worker 0 made no progress for 2s": 1,
        "NetAggTimeout: switch 127.0.0.1:47000 did not answer JOIN": 2,
    }
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert sum(lv == logging.ERROR for lv, _ in levels) == 1
    assert sum(lv == logging.DEBUG and "still cannot serve" in m for lv, m in levels) == 2
    returns = [m for lv, m in levels if lv == logging.INFO and "serves rank 0 again" in m]
    assert len(returns) == 1 and "bucket 7" in returns[0] and "6 buckets through" in returns[0]
    # The back-off starts over: a new outage is tried again after retry_after, and is a WARNING.
    sw.fail_calls = 1
    bucket(state, 9)
    clock[0] += 1.0
    bucket(state, 10)
    assert state.stats.returns == 2
    assert [r.levelno for r in caplog.records if "cannot serve rank" in r.getMessage()] == [40, 30]


def test_retry_after_none_never_tries_again() -> None:
    state, sw, clock = make_state(retry_after=None)
    sw.fail_calls = 1
    bucket(state)
    clock[0] += 1e6
    bucket(state, 1)
    assert state.stats.retries == 0 and len(sw.made) == 1 and state.stats.gloo_buckets == 2


def test_fallback_error_raises_the_cause() -> None:
    state, sw, _ = make_state(fallback="error")
    sw.fail_calls = 1
    with pytest.raises(NetAggTimeout, match="made no progress"):
        bucket(state)
    assert state.stats.gloo_buckets == 0


@pytest.mark.parametrize("code", ["ALREADY_EXISTS", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED"])
def test_a_refused_first_join_at_the_controller_is_raised_not_fallen_back_from(code: str, caplog) -> None:
    state, _, _ = make_state(switch=None, controller="127.0.0.1:47100", job="j-1")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ControllerError(f"controller 127.0.0.1:47100: {code}: rank 0 of job j-1 ...", code)

    state._make_worker = refuse
    with pytest.raises(ControllerError, match=code):
        bucket(state)
    assert state.stats.gloo_buckets == 0 and state.stats.fallbacks == 0
    assert any(r.levelno == logging.ERROR and code in r.getMessage() for r in caplog.records)


def test_a_wrong_key_at_the_first_join_is_raised() -> None:
    state, _, _ = make_state(key=1)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RefusedError("bad_key", "switch 127.0.0.1:47000 refused the key of job 1 (bad_key)")

    state._make_worker = refuse
    with pytest.raises(RefusedError, match="bad_key"):
        bucket(state)
    assert state.stats.fallbacks == 0


def test_later_joins_replace_and_fall_back_on_any_controller_error() -> None:
    state, sw, clock = make_state(switch=None, controller="127.0.0.1:47100", job="j-1")
    bucket(state)
    assert sw.made[0]["replace"] is False and sw.made[0]["controller"] == "127.0.0.1:47100"
    sw.fail_calls = 1
    bucket(state, 1)

    def gone(*args: Any, **kwargs: Any) -> None:
        raise ControllerError("controller 127.0.0.1:47100: NOT_FOUND: no job j-1", "NOT_FOUND")

    state._make_worker = gone
    clock[0] += 1
    bucket(state, 2)  # a deleted job, later: one more cause, the run goes on
    assert state.stats.causes["ControllerError: controller 127.0.0.1:47100: NOT_FOUND: no job j-1"] == 1


def test_the_first_connect_passes_the_users_join_options() -> None:
    state, sw, _ = make_state(replace=True, key="00000000000000ff", join_timeout=7.0, tls_ca=None)
    state.worker_options["min_rto"] = 0.05
    bucket(state)
    made = sw.made[0]
    assert made["replace"] is True and made["key"] == 0xFF and made["join_timeout"] == 7.0
    assert made["min_rto"] == 0.05 and made["timeout"] == state.timeout and made["job"] == 1


def test_outputs_are_kept_per_bucket_index_and_follow_its_size() -> None:
    state, _, _ = make_state()
    a, b = bucket(state, 0), bucket(state, 1)
    assert a.data_ptr() != b.data_ptr()
    assert bucket(state, 0).data_ptr() == a.data_ptr()  # reused at the next step
    assert bucket(state, 0, n=16).numel() == 16  # DDP rebuilt its buckets


def test_summary_and_log_summary(caplog) -> None:
    state, sw, _ = make_state()
    caplog.set_level(logging.INFO, LOGGER)
    bucket(state)
    state.log_summary()
    assert caplog.records[-1].levelno == logging.INFO
    sw.fail_calls = 1
    bucket(state, 1)
    state.close()
    last = caplog.records[-1]
    assert last.levelno == logging.WARNING and "1 (0.0 MiB) through the process group" in last.getMessage()
    assert set(state.summary()) == {
        "buckets",
        "switch_buckets",
        "switch_bytes",
        "gloo_buckets",
        "gloo_bytes",
        "peer_buckets",
        "fallbacks",
        "retries",
        "returns",
        "causes",
        "falling_back",
    }
    state.close()  # twice is fine


def test_state_validates_the_join_and_retry_arguments() -> None:
    ok: dict[str, Any] = {"switch": "127.0.0.1:1", "rank": 0, "world_size": 2}
    with pytest.raises(ValueError, match="16 hex digits"):
        NetAggState(**ok, key="xyz")
    with pytest.raises(ValueError, match="64 bits"):
        NetAggState(**ok, key=1 << 64)
    with pytest.raises(ValueError, match="int job id"):
        NetAggState(switch="127.0.0.1:1", job="j-1", rank=0, world_size=2)
    with pytest.raises(ValueError, match="retry_after"):
        NetAggState(**ok, retry_after=0)
    with pytest.raises(ValueError, match="retry_after"):
        NetAggState(**ok, retry_after=60, retry_max=30)
    with pytest.raises(ValueError, match="own arguments"):
        NetAggState(**ok, worker_options={"replace": True})


def test_state_pickles_without_its_threads() -> None:
    import pickle

    state = NetAggState(switch="127.0.0.1:1", rank=1, world_size=2, replace=True, key=5, retry_after=2.0)
    copy = pickle.loads(pickle.dumps(state))
    assert (copy.rank, copy.replace, copy.key, copy.retry_after) == (1, True, 5, 2.0)
    assert copy.summary()["buckets"] == 0


def test_a_call_that_raises_something_else_is_not_swallowed() -> None:
    state, _, _ = make_state()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("rank must be in [0, 2), got 3")

    state._make_worker = broken
    with pytest.raises(ValueError, match="rank must be"):
        bucket(state)


def test_a_worker_that_is_still_usable_is_kept() -> None:
    """A call that failed with JobReformed leaves its Worker usable (``_broken`` unset): the bucket
    falls back, and the try to go back uses the same worker instead of joining again."""
    from host_agent.errors import JobReformed

    state, sw, clock = make_state()
    bucket(state)
    worker = state._worker
    worker._broken = None

    def reformed(x: Any, out: Any, *, average: bool) -> Any:
        del worker.allreduce  # the next call goes through
        raise JobReformed("job 1 was re-formed while this call ran")

    worker.allreduce = reformed
    bucket(state, 1)
    assert state.stats.gloo_buckets == 1 and sw.closed == 0
    clock[0] += 1
    bucket(state, 2)
    assert len(sw.made) == 1 and state.stats.returns == 1 and state._worker is worker
