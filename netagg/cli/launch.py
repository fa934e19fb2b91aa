"""Start the switch and workers as real processes (for the demo, the benchmarks and tests).

:class:`SwitchProcess` runs ``netagg switch`` (and :class:`ControllerProcess` ``netagg controller``) and
waits for the JSON line it prints once it serves (``{"event": "ready", ...}``; no sleep-and-hope), from
which it learns the addresses; it is stopped by PID with SIGTERM and a switch's final counters are read
from its output.
:func:`run_workers` runs one function per rank in spawned processes and returns their results in rank
order, raising with the worker's traceback if any of them fails.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ControllerProcess", "SwitchProcess", "WorkerFailed", "free_port", "ready_event", "run_workers"]


def free_port(udp: bool = False) -> int:
    """A port on 127.0.0.1 that nothing is bound to right now (TCP, or UDP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready_event(line: str) -> dict[str, Any] | None:
    """The ready event a serving ``netagg`` command prints (one JSON object with ``"event": "ready"``),
    if ``line`` is one; else None (its counters at exit, or anything else)."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and event.get("event") == "ready" else None


class _ServiceProcess:
    """A ``netagg`` subcommand in a child process, ready once it prints its ready line."""

    what = ""  # "switch", "controller": the role in its ready line, and for error messages

    def _start(self, cmd: list[str], ready_timeout: float, cpu: int | None = None) -> dict[str, Any]:
        # stderr goes to a file, not a pipe nobody drains while it runs (a full pipe would block it).
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the process; closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.pid = self.proc.pid
        if cpu is not None:
            os.sched_setaffinity(self.pid, {cpu})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + ready_timeout
        line = ""
        event = None
        while time.monotonic() < deadline:  # it prints its addresses once it is bound
            line = self.proc.stdout.readline()
            event = ready_event(line)
            if event is not None:
                break
            if not line and self.proc.poll() is not None:
                break
        else:
            self.stop()
            raise RuntimeError(f"{self.what} did not start within {ready_timeout}s")
        if event is None or event.get("role") != self.what:
            self.proc.wait()
            raise RuntimeError(f"{self.what} failed to start: {self.stderr().strip() or line.strip()}")
        #: What it said when ready: ``{"event": "ready", "role": ..., <addresses>, "pid": ...}``.
        self.ready = event
        return event

    def stderr(self) -> str:
        """What the process wrote to stderr so far."""
        self._stderr.seek(0)
        return self._stderr.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to clean up (what a crash looks like)."""
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 10.0) -> str:
        """SIGTERM, wait (SIGKILL after ``timeout``); returns what it printed on stdout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        except ValueError:  # stdout already closed by an earlier stop()
            out = ""
        self._stderr.close()
        return out or ""


class SwitchProcess(_ServiceProcess):
    """``netagg switch`` in a child process.

    Args:
        workers, elements, slots, job, multicast: the static job (see ``netagg switch --help``);
            workers=None for none (jobs then come through the SwitchAgent).
        agent: also serve the SwitchAgent gRPC API on this "HOST:PORT" (port 0: any free one).
        controller: register with this controller (implies an agent on 127.0.0.1:0).
        token: the bearer token of the agent (and for registering); needed with agent or controller.
        total_slots: slots the control plane may give out on the switch.
        listen: ``HOST:PORT``; port 0 lets the kernel choose (read it from ``address``).
        stats_file: where the switch writes its counters (default: none).
        prefix: command to run the switch under, e.g. ``["ip", "netns", "exec", "ns1"]``.
        cpu: pin the switch to this CPU (``os.sched_setaffinity``), or None.
        extra: more ``netagg switch`` flags.
    """

    what = "switch"

    def __init__(
        self,
        workers: int | None,
        *,
        elements: int | None = None,
        slots: int | None = None,
        job: int = 1,
        listen: str = "127.0.0.1:0",
        stats_file: Path | None = None,
        prefix: Sequence[str] = (),
        cpu: int | None = None,
        ready_timeout: float = 20.0,
        multicast: str | None = None,
        agent: str | None = None,
        controller: str | None = None,
        token: str | None = None,
        total_slots: int | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        cmd = [*prefix, sys.executable, "-m", "netagg.cli", "switch", "--listen", listen, "--job", str(job)]
        for flag, value in (
            ("--workers", workers),
            ("--agent", agent),
            ("--controller", controller),
            ("--token", token),
            ("--total-slots", total_slots),
            ("--elements", elements),
            ("--slots", slots),
            ("--multicast", multicast),
        ):
            if value is not None:
                cmd += [flag, str(value)]
        if stats_file is not None:
            cmd += ["--stats-file", str(stats_file), "--stats-interval", "0.2"]
        cmd += list(extra)
        self.stats: dict[str, Any] | None = None
        ready = self._start(cmd, ready_timeout, cpu)
        #: The data plane's "HOST:PORT".
        self.address: str = ready["data"]
        #: The SwitchAgent's "HOST:PORT" when started with agent=... or controller=..., else None.
        self.agent_address: str | None = ready.get("agent")

    def stop(self, timeout: float = 10.0) -> dict[str, Any] | None:  # type: ignore[override]
        """SIGTERM, wait, and return the counters it printed on the way out (None if it died)."""
        out = super().stop(timeout)
        for line in reversed(out.splitlines()):
            if line.startswith("{") and ready_event(line) is None:
                self.stats = json.loads(line)
                break
        return self.stats

    def __enter__(self) -> SwitchProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ControllerProcess(_ServiceProcess):
    """``netagg controller`` in a child process (state in ``db``; port 0 picks a free port unless
    ``listen`` names one, which a restart on the same address needs)."""

    what = "controller"

    def __init__(
        self,
        db: Path,
        *,
        token: str | None = None,
        listen: str = "127.0.0.1:0",
        ready_timeout: float = 20.0,
        extra: Sequence[str] = (),
    ) -> None:
        cmd = [sys.executable, "-m", "netagg.cli", "controller", "--listen", listen, "--db", str(db)]
        if token is not None:
            cmd += ["--token", token]
        cmd += list(extra)
        ready = self._start(cmd, ready_timeout)
        #: The controller's "HOST:PORT".
        self.address: str = ready["address"]

    def __enter__(self) -> ControllerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerFailed(RuntimeError):
    """A worker process raised; the message carries its traceback."""


def _trampoline(
    fn: Callable[..., Any], rank: int, args: tuple[Any, ...], results: Any, cpus: set[int] | None
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        results.put((rank, True, fn(rank, *args)))
    except BaseException:  # report everything, including KeyboardInterrupt, to the parent
        results.put((rank, False, traceback.format_exc()))


def run_workers(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 300.0, cpus: set[int] | None = None
) -> list[Any]:
    """Run ``fn(rank, *args)`` for every rank in its own spawned process; results in rank order.

    ``fn`` must be importable (a module-level function). ``cpus`` pins the workers to those CPUs.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_trampoline, args=(fn, r, args, results, cpus), daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    failures: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) + len(failures) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerFailed(
                    f"workers {sorted(set(range(world_size)) - set(out))} did not finish within {timeout}s"
                )
            try:
                rank, ok, value = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and results.empty():
                    raise WorkerFailed(f"worker process died with exit code {dead[0].exitcode}") from None
                continue
            if ok:
                out[rank] = value
            else:
                failures.append(f"rank {rank}:\n{value}")
        if failures:
            raise WorkerFailed("\n".join(failures))
        return [out[r] for r in range(world_size)]
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
