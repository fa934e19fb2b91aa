"""The scale model's loopback runs (mininet_topos/calibration.py): a real switch process and worker
processes timing netagg and gloo's ring with their CPU seconds, written and read back for a fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mininet_topos.calibration import loopback, write
from netagg.model import Costs, predict
from netagg.model_fit import fit, load

pytest.importorskip("torch")


def test_loopback_runs_give_times_and_cpu_seconds_a_fit_reads(tmp_path: Path) -> None:
    ms = loopback([2], [0.5], [2000, 500], reps=2, cores=2)
    assert [(m.algorithm, m.config.payload_bytes) for m in ms] == [
        ("ina", 8000),
        ("ring", 8000),
        ("ina", 2000),
    ]
    for m in ms:
        assert m.seconds > 0 and m.host_cpu_s is not None and m.host_cpu_s > 0
        assert (m.switch_cpu_s is not None and m.switch_cpu_s > 0) == (m.algorithm == "ina")
    # (Whether smaller packets cost the switch more CPU shows at sizes beyond a fast test: CPU seconds
    # come in 10 ms ticks; docs/model.md has the measured costs.)
    write(ms, tmp_path / "loopback.json")
    assert json.loads((tmp_path / "loopback.json").read_text())["kind"] == "netagg-model-measurements"
    back = load([tmp_path / "loopback.json"])
    assert [(m.algorithm, m.seconds, m.host_cpu_s) for m in back] == [
        (m.algorithm, m.seconds, m.host_cpu_s) for m in ms
    ]
    result = fit(back)
    assert result.costs.switch_packet_s + result.costs.switch_byte_s > 0
    p = predict("ina", "allreduce", back[0].config, result.costs)
    assert p.seconds > 0 and p.seconds != predict("ina", "allreduce", back[0].config, Costs()).seconds
