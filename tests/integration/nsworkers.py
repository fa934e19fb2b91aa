"""`netagg allreduce` as one process per network namespace, as a user would run it on each host: for
the namespace tests and the BMv2 tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def allreduce_in(
    namespaces: Sequence[str],
    switch: str,
    size: int,
    dtype: str,
    *,
    binds: Sequence[str] | None = None,
    batch: bool = True,
    worker_timeout: float = 30,
    timeout: float = 300,
) -> list[dict[str, Any]]:
    """Rank r runs in ``namespaces[r]`` (bound to ``binds[r]`` if given), 2 checked repetitions each;
    returns each rank's JSON report. Fails the test if a rank fails; kills them all on the way out."""
    procs = [
        subprocess.Popen(
            [
                *("ip", "netns", "exec", ns, sys.executable, "-m", "netagg.cli", "allreduce"),
                *("--switch", switch, "--rank", str(rank), "--world-size", str(len(namespaces))),
                *("--size", str(size), "--dtype", dtype, "--repeat", "2", "--check"),
                *("--timeout", str(worker_timeout)),
                *(("--bind", binds[rank]) if binds is not None else ()),
                *(() if batch else ("--no-batch",)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for rank, ns in enumerate(namespaces)
    ]
    return reports_of(procs, timeout)


def reports_of(procs: Sequence[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any]]:
    """Each `netagg allreduce` process's JSON report (its last line), in order. Fails the test if one
    fails; kills them all (by PID) on the way out."""
    try:
        reports = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
