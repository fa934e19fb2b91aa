"""Clear errors, never hangs: no switch, a worker that never joins, a worker that stops calling."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from host_agent.worker import NetAggTimeout, Worker
from netagg.cli.launch import free_port, run_workers
from tests.integration import workers as wk


def test_no_switch() -> None:
    t0 = time.monotonic()
    with pytest.raises(NetAggTimeout, match="did not answer JOIN"):
        Worker(f"127.0.0.1:{free_port(udp=True)}", 0, 2, join_timeout=1.0)
    assert time.monotonic() - t0 < 5


def test_missing_worker_named_at_join(switch_factory) -> None:
    sw = switch_factory(3)
    with pytest.raises(NetAggTimeout, match=r"workers \[1, 2\] did not join"):
        Worker(sw.address, 0, 3, join_timeout=1.0)


def test_world_size_mismatch(switch_factory) -> None:
    sw = switch_factory(1)
    with pytest.raises(
        RuntimeError, match="has 1 workers in all, but this worker was started with world_size=2"
    ):
        Worker(sw.address, 0, 2, worker_id=0, join_timeout=5.0)


def test_stalled_worker_is_named(switch_factory) -> None:
    sw = switch_factory(3, elements=1024)
    out = run_workers(wk.stall, 3, sw.address, 3, 2, 1.5, timeout=60)
    for rank in (0, 1):
        assert out[rank].startswith("NetAggTimeout"), out[rank]
        assert "Workers [2] have not contributed" in out[rank], out[rank]


def test_switch_killed_mid_run(switch_factory) -> None:
    sw = switch_factory(1)
    w = Worker(sw.address, 0, 1, timeout=1.0)
    try:
        assert w.allreduce([1.0, 2.0]).tolist() == [1.0, 2.0]
        sw.proc.kill()
        sw.proc.wait()
        with pytest.raises(NetAggTimeout, match="answered none of the retransmissions"):
            w.allreduce([1.0])
        with pytest.raises(RuntimeError, match="unusable after an earlier failure"):
            w.allreduce([1.0])
    finally:
        w.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["switch", "--workers", "0"], "argument --workers: 0 is outside [1, 32]"),
        (["switch", "--workers", "4", "--listen", "nowhere"], "expected HOST:PORT"),
        (["switch", "--workers", "4", "--elements", "70000"], "70000 is outside"),
        (
            ["relay", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--loss", "2"],
            "not a probability",
        ),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_cli_flags_one_line(argv: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "netagg.cli", *argv], check=False, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_switch_stops_gracefully_on_sigterm(switch_factory) -> None:
    sw = switch_factory(2)
    stats = sw.stop()
    assert sw.proc.returncode == 0
    assert stats is not None and stats["counters"].get("packets_in", 0) == 0


def test_switch_that_cannot_start_says_why() -> None:
    from netagg.cli.launch import SwitchProcess

    with pytest.raises(RuntimeError, match=r"switch failed to start: .*--workers: 0 is outside \[1, 32\]"):
        SwitchProcess(0)
