"""examples/train_gpt.py under torchrun on 2 processes, FSDP2 over the netagg backend through a real
switch process against the same run over gloo; and bench/collectives.py's smallest configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from netagg.cli.launch import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "train_gpt.py"
BENCH = ROOT / "bench" / "collectives.py"

# A model small enough that a run takes seconds (108 k parameters), big enough to learn in 8 steps.
TINY = ["--d-model", "64", "--layers", "2", "--heads", "2", "--context", "64", "--batch-size", "4"]
TINY += ["--steps", "8", "--warmup", "2", "--eval-every", "4", "--eval-batches", "2"]


def netagg_backend_missing() -> str | None:
    """Why the netagg torch.distributed backend cannot be used here, or None if it can."""
    import torch.distributed as dist

    try:
        import host_agent  # noqa: F401  (registers the backend)
    except ImportError as exc:
        return f"host_agent does not import: {exc}"
    if "netagg" not in dist.Backend.backend_list:
        return "`import host_agent` registers no 'netagg' torch.distributed backend (issue #16, item 4)"
    return None


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def train(backend: str, out: Path, **env: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-port", str(free_port()), str(EXAMPLE), "--backend", backend, *TINY, "--out", str(out)]
    proc = subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{backend} training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def test_gpt_fsdp2_over_netagg_learns_as_on_gloo(switch_factory, tmp_path: Path) -> None:
    missing = netagg_backend_missing()
    if missing:
        pytest.skip(missing)
    sw = switch_factory(2)
    ours = train("netagg", tmp_path / "netagg.json", NETAGG_SWITCH=sw.address)
    counters = (sw.stop() or {}).get("counters", {})
    theirs = train("gloo", tmp_path / "gloo.json")

    # The first loss comes before any reduction: the parameters were all-gathered, and an all-gather
    # carries bytes unchanged, so it is gloo's to the bit.
    assert ours["train_loss"][0] == theirs["train_loss"][0]
    for run in (ours, theirs):
        assert run["train_loss"][-1] < 0.9 * run["train_loss"][0], run["train_loss"]
        assert run["eval"][-1]["loss"] < run["eval"][0]["loss"]
    # Gradients are reduce-scattered through the switch in quantized form (2**-29 of a block's largest
    # value at W=2): eight steps later the losses still agree to well within 1%.
    for a, b in zip(ours["train_loss"], theirs["train_loss"], strict=True):
        assert a == pytest.approx(b, rel=1e-2)
    assert ours["final_eval_loss"] == pytest.approx(theirs["final_eval_loss"], rel=1e-2)

    # Every collective went through the switch, and the switch saw the traffic.
    for rank in ours["backend_stats"]:
        assert rank["switch_ops"] > 0 and rank["fallbacks"] == 0, rank
        # at least one reduce-scatter of every gradient (4 B each) per step went up
        assert rank["bytes_sent"] >= 4 * ours["parameters"] * ours["steps"]
    assert counters.get("packets_in", 0) > 0
    assert theirs["backend_stats"] == [{}, {}]  # gloo keeps no counters: nothing was mixed up


def test_collectives_bench_smallest_configuration(tmp_path: Path) -> None:
    """Every collective once at W=2 on 256 KiB (netagg where the backend exists, else gloo in both
    places, which checks the harness alone); the JSON rows, and through netagg the traffic's shape."""
    backend = "gloo" if netagg_backend_missing() else "netagg"
    cmd = [sys.executable, str(BENCH), "--backend", backend, "--workers", "2", "--sizes", "0.25"]
    cmd += ["--dtypes", "fp32", "--rounds", "1", "--warmup", "0", "--fsdp-steps", "0", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["op"] for r in rows] == ["all_reduce", "reduce_scatter", "all_gather", "broadcast"]
    for r in rows:
        assert r["workers"] == 2 and r["backend"] == backend
        assert r["netagg_ms"] > 0 and r["gloo_ms"] > 0 and r["paired_ratio"] > 0
    assert (tmp_path / "collectives.json").exists() and (tmp_path / "collectives.png").exists()
    if backend == "netagg":
        shape = {r["op"]: (r["sent_per_call"], r["received_per_call"]) for r in rows}
        # per rank, as fractions of S: a reduce-scatter sends S up and gets its S/W shard back; an
        # all-gather sends its S/W shard and gets S (headers and the odd resend on top)
        assert 0.95 <= shape["reduce_scatter"][0] <= 1.4 and 0.45 <= shape["reduce_scatter"][1] <= 0.8
        assert 0.45 <= shape["all_gather"][0] <= 0.8 and 0.95 <= shape["all_gather"][1] <= 1.4
        assert all(r["fallbacks"] == 0 for r in rows)
