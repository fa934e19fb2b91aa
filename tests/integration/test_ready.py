"""The ready line: a serving ``netagg`` command says it serves with one JSON line on stdout (or in
``--ready-file``) and keeps its human banner on stderr; at exit a switch prints its counters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netagg.cli.launch import ready_event

pytestmark = pytest.mark.integration


def _netagg(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "netagg.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out, err


def test_switch_prints_the_ready_line_then_its_counters() -> None:
    proc = _netagg("switch", "--workers", "2", "--listen", "127.0.0.1:0")
    try:
        assert proc.stdout is not None
        event = ready_event(proc.stdout.readline())
        assert event is not None, "the first line on stdout is the ready line"
        assert event["role"] == "switch" and event["pid"] == proc.pid and event["agent"] is None
        host, port = event["data"].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
    finally:
        out, err = _stop(proc)
    assert f"netagg switch on {event['data']}: job 1, 2 workers" in err  # the banner, for people
    counters = json.loads(out.strip().splitlines()[-1])
    assert ready_event(out.strip().splitlines()[-1]) is None and "counters" in counters


def test_ready_file_instead_of_stdout(tmp_path: Path) -> None:
    ready = tmp_path / "relay.ready"
    proc = _netagg(
        "relay", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--ready-file", str(ready)
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no ready file within 20 s"
            time.sleep(0.05)
        event = ready_event(ready.read_text())
        assert event is not None and event["role"] == "relay" and event["pid"] == proc.pid
        assert event["upstream"] == "127.0.0.1:9" and not event["address"].endswith(":0")
    finally:
        out, err = _stop(proc)
    assert all(ready_event(line) is None for line in out.splitlines())  # not on stdout as well
    assert "netagg relay " in err
