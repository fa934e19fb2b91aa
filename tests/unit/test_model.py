"""The scale model (netagg/model.py): its formulas' limits, the fit recovering known costs, the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from netagg.cli import main
from netagg.model import (
    ETH_IP_UDP,
    NETAGG_HEADER,
    TCP_OVERHEAD,
    Config,
    Costs,
    bytes_per_host,
    levels,
    predict,
    steps,
)
from netagg.model_fit import Measurement, fit, load, nnls, table

MIB = 1 << 20


@pytest.mark.parametrize("n", [2, 3, 8, 1000])
def test_bytes_per_host_ring_2s_n_minus_1_over_n_ina_s_tree_2s(n: int) -> None:
    s = 64 * MIB
    assert bytes_per_host("ring", "allreduce", n, s) == pytest.approx(2 * s * (n - 1) / n)
    assert bytes_per_host("ring", "reduce_scatter", n, s) == pytest.approx(s * (n - 1) / n)
    assert bytes_per_host("ring", "all_gather", n, s) == pytest.approx(s * (n - 1) / n)
    assert bytes_per_host("tree", "allreduce", n, s) == 2 * s
    for collective in ("allreduce", "reduce_scatter", "all_gather"):
        assert bytes_per_host("ina", collective, n, s) == s
    assert bytes_per_host("ring", "allreduce", 1, s) == 0


def test_steps_ring_linear_tree_logarithmic_ina_constant_levels() -> None:
    assert steps("ring", "allreduce", 8) == 14
    assert steps("ring", "reduce_scatter", 8) == 7
    assert steps("ring", "allreduce", 100_000) == 2 * 99_999
    assert steps("tree", "allreduce", 8) == 6
    assert steps("tree", "allreduce", 100_000) == 2 * 17
    assert steps("ina", "allreduce", 8) == 2  # one switch
    assert steps("ina", "allreduce", 100_000, fan_in=32) == 2 * 4
    assert [levels(n, 32) for n in (8, 32, 33, 1024, 1025, 100_000)] == [1, 1, 2, 2, 3, 4]
    assert levels(100_000, 0) == 1
    assert steps("ring", "allreduce", 1) == 0


def test_link_bound_times_are_bytes_over_rate_with_headers() -> None:
    n, s, bw = 8, 64 * MIB, 100e6
    cfg = Config(n, s, bandwidth_bps=bw, link_latency_s=0.0)
    ring = predict("ring", "allreduce", cfg, Costs())
    ina = predict("ina", "allreduce", cfg, Costs())
    assert ring.bottleneck == ina.bottleneck == "link"
    mss = 9000 - TCP_OVERHEAD
    assert ring.seconds == pytest.approx(2 * s * (n - 1) / n / mss * 9000 * 8 / bw)
    assert ina.seconds == pytest.approx(s / 8000 * (8000 + ETH_IP_UDP + NETAGG_HEADER) * 8 / bw)
    # The bandwidth-bound speed-up is the bytes' ratio, 1.75 at 8 workers, less the headers' difference.
    assert ring.seconds / ina.seconds == pytest.approx(1.75, rel=0.01)


def test_latency_term_is_steps_times_step_latency() -> None:
    costs = Costs(link_latency_s=1e-6, ring_step_s=5e-6)
    cfg = Config(100_000, 4, fan_in=32)  # 4 bytes: latency alone
    ring = predict("ring", "allreduce", cfg, costs)
    tree = predict("tree", "allreduce", cfg, costs)
    ina = predict("ina", "allreduce", cfg, costs)
    assert ring.latency_s == pytest.approx(2 * 99_999 * (5e-6 + 2 * 4 * 1e-6))
    assert tree.latency_s == pytest.approx(2 * 17 * (5e-6 + 2 * 4 * 1e-6))
    assert ina.latency_s == pytest.approx(8 * 1e-6)
    assert ina.seconds < tree.seconds < ring.seconds


def test_switch_and_host_costs_bound_ina_and_shared_cores_add_up() -> None:
    costs = Costs(switch_packet_s=1e-5, switch_byte_s=1e-9, host_byte_s=1e-9)
    cfg = Config(4, 8 * MIB, payload_bytes=8000)
    uses = 8 * MIB / 8000
    p = predict("ina", "allreduce", cfg, costs)
    assert p.bottleneck == "switch"
    assert p.transfer_s == pytest.approx(uses * 4 * (1e-5 + 8000e-9))
    shared = predict("ina", "allreduce", cfg, replace(costs, cores=1))
    host = 2 * 8 * MIB * 1e-9
    assert shared.bottleneck == "cpu"
    assert shared.transfer_s == pytest.approx(4 * host + uses * 4 * (1e-5 + 8000e-9))


def test_ina_collectives_follow_the_protocols_traffic() -> None:
    costs = Costs(switch_packet_s=1e-5, switch_byte_s=1e-9, host_byte_s=1e-9)
    one, tree = Config(4, 8 * MIB, bandwidth_bps=1e9), Config(4, 8 * MIB, bandwidth_bps=1e9, fan_in=2)
    from netagg.model import bound

    # Reduce-scatter: S up, S/n down from one switch, S down below a tree's root (allreduce traffic).
    assert bound("ina", "reduce_scatter", one, costs, "host") < bound("ina", "allreduce", one, costs, "host")
    assert bound("ina", "reduce_scatter", tree, costs, "host") == bound(
        "ina", "allreduce", tree, costs, "host"
    )
    # All-gather: a packet from every worker for every use, the payload from the owner alone.
    ag, ar = (bound("ina", c, one, costs, "switch") for c in ("all_gather", "allreduce"))
    uses = 8 * MIB / 8000
    assert ag == pytest.approx(uses * (4 * 1e-5 + 8000e-9))
    assert ar == pytest.approx(uses * 4 * (1e-5 + 8000e-9))


def test_loss_costs_ina_a_wait_per_lost_use_and_tcp_the_mathis_bound() -> None:
    costs = Costs(loss_recovery_s=0.01, link_latency_s=1e-4, ring_step_s=1e-4)
    clean = predict("ina", "allreduce", Config(4, 8 * MIB), costs)
    lossy = predict("ina", "allreduce", Config(4, 8 * MIB, loss=0.01), costs)
    p_use = 1 - 0.99 ** (2 * 4)
    assert lossy.loss_s == pytest.approx(8 * MIB / 8000 * p_use * 0.01 / 64)
    assert clean.loss_s == 0 and lossy.seconds > clean.seconds
    ring = predict("ring", "allreduce", Config(4, 8 * MIB, loss=0.05), costs)
    assert ring.bottleneck == "tcp-loss"


def test_bad_configurations_raise_with_the_reason() -> None:
    for kw, what in (
        ({"workers": 0}, "workers"),
        ({"loss": 1.0}, "loss"),
        ({"fan_in": 1}, "fan-in"),
        ({"bandwidth_bps": 0}, "bandwidth"),
        ({"payload_bytes": 9000}, "MTU"),
    ):
        with pytest.raises(ValueError, match=what):
            Config(**{"workers": 4, "size_bytes": 1.0, **kw})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="algorithm"):
        predict("butterfly", "allreduce", Config(4, 1.0), Costs())


def test_nnls_matches_the_unconstrained_solution_inside_and_clamps_outside() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((30, 4))
    x = np.array([1.0, 2.0, 0.5, 3.0])
    assert nnls(a, a @ x) == pytest.approx(x, rel=1e-9)
    y = nnls(a, a @ np.array([1.0, -2.0, 0.5, 3.0]))
    assert (y >= 0).all() and y[1] == 0


TRUE = Costs(
    call_s=2e-3,
    link_latency_s=1e-4,
    host_byte_s=2e-9,
    host_packet_s=2e-5,
    switch_packet_s=3e-5,
    switch_byte_s=1.5e-9,
    loss_recovery_s=0.05,
    ring_call_s=1e-3,
    ring_step_s=3e-4,
    ring_byte_s=3e-9,
    cores=1.25,
)


def _synthetic() -> list[Measurement]:
    """Runs on shared cores (times and CPU seconds) and on rate-limited links, made by TRUE."""
    out = []
    for n in (2, 4, 8):
        for mib in (0.25, 32):
            for payload in (2000, 8000):
                for fan_in, loss, bw in ((0, 0.0, math.inf), (2, 0.0, math.inf), (0, 0.01, math.inf)):
                    cfg = Config(
                        n, mib * MIB, payload_bytes=payload, fan_in=fan_in, loss=loss, bandwidth_bps=bw
                    )
                    for a in ("ina", "ring"):
                        p = predict(a, "allreduce", cfg, TRUE)
                        from netagg.model import bound

                        host = bound(a, "allreduce", cfg, TRUE, "host")
                        switch = bound(a, "allreduce", cfg, TRUE, "switch") if a == "ina" else None
                        out.append(Measurement(a, "allreduce", cfg, p.seconds, 2, host, switch))
    return out


def test_fit_recovers_known_costs_from_synthetic_runs() -> None:
    result = fit(_synthetic())
    assert result.rms_relative_error < 5e-3
    assert result.costs.cores == pytest.approx(1.25, rel=0.02)
    for k in ("host_byte_s", "host_packet_s", "switch_packet_s", "switch_byte_s", "ring_byte_s", "call_s"):
        assert getattr(result.costs, k) == pytest.approx(getattr(TRUE, k), rel=0.02), k
    assert result.costs.loss_recovery_s == pytest.approx(TRUE.loss_recovery_s, rel=0.05)


def test_fit_says_what_the_runs_do_not_determine() -> None:
    ina_only = [m for m in _synthetic() if m.algorithm == "ina" and m.config.loss == 0]
    result = fit(ina_only)
    assert {"ring_byte_s", "ring_step_s", "ring_call_s", "loss_recovery_s"} <= set(result.unidentified)
    assert table(ina_only[:3], result.costs)[0]["relative_error"] == pytest.approx(0, abs=0.01)


def test_load_reads_the_experiment_runners_json(tmp_path: Path) -> None:
    summary = {
        "topology": "leafspine2x2",
        "hosts": 4,
        "shapes": [{"leaves": 2, "hosts_per_leaf": 2}],
        "elements_per_packet": 2000,
        "slots": 128,
        "repeat": 3,
        "forwarding": "bridge",
        "machine": {"cpus": 2},
        "runs": [
            {"workers": 4, "loss_percent": 1.0, "mib": 4.0, "seconds": 0.5},  # the older runner's
            {
                "workers": 4,
                "loss_percent": 0,
                "mib": 4.0,
                "bandwidth_mbit": 100,
                "elements": 1 << 20,  # the tensor's, not the packet's
                "netagg": {"seconds": 0.4, "retransmissions": 30},
                "ring": {"seconds": 0.9},
            },
        ],
    }
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(summary))
    old, ina, ring = load([path], cores=7)
    assert (old.algorithm, old.config.fan_in, old.config.loss, old.config.size_bytes) == (
        "ina",
        2,
        0.01,
        4 * MIB,
    )
    assert (ina.config.payload_bytes, ina.config.bandwidth_bps, ina.cores, ina.seconds) == (
        8000,
        100e6,
        2,
        0.4,
    )
    # 10 retransmissions per call of 4 hosts x 524 uses: the drops it saw, as loss on its 6 links.
    p_use = 10 / (4 * 4 * MIB / 8000)
    assert ina.config.loss == pytest.approx(1 - (1 - p_use) ** (1 / 12))
    assert (ring.algorithm, ring.config.loss, ring.config.via_switch, ring.seconds) == ("ring", 0, False, 0.9)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match=r"not an experiment\.json"):
        load([tmp_path / "x.json"])


def test_load_reads_bench_allreduce_results(tmp_path: Path) -> None:
    row = {"workers": 4, "mib": 16.0, "elements": 16370, "netagg_ms": 120.0, "gloo_ms": 80.0}
    (tmp_path / "results.json").write_text(json.dumps({"machine": {"cpus": 2}, "rows": [row]}))
    ina, ring = load([tmp_path / "results.json"])
    assert (ina.algorithm, ina.seconds, ina.config.payload_bytes, ina.cores) == ("ina", 0.12, 65480, 2)
    assert (ring.algorithm, ring.seconds, ring.config.via_switch, ring.config.size_bytes) == (
        "ring",
        0.08,
        False,
        16 * MIB,
    )


def test_cli_predict_prints_every_algorithm_and_collective(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "predict", "--workers", "8", "--size-mib", "64", "--bw-mbit", "100", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["algorithm"], r["collective"]) for r in rows} == {
        (a, c) for a in ("ring", "tree", "ina") for c in ("allreduce", "reduce_scatter", "all_gather")
    }
    ring = next(r for r in rows if r["algorithm"] == "ring" and r["collective"] == "allreduce")
    assert ring["bytes_per_host"] == pytest.approx(1.75 * 64 * MIB)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["model", "predict", "--workers", "0"], "--workers: 0 is outside"),
        (["model", "predict", "--workers", "4", "--loss", "100"], "--loss: 100.0 is not a percentage"),
        (["model", "predict", "--workers", "4", "--bw-mbit", "-1"], "--bw-mbit: -1.0 is not positive"),
        (["model", "predict", "--workers", "4", "--fan-in", "x"], "--fan-in: 'x' is not a whole number"),
        (["model", "plot", "--out", "o", "--sizes-mib", "1,a"], "--sizes-mib: expected comma-separated"),
        (["model"], "required: COMMAND"),
    ],
)
def test_cli_bad_flags_get_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_cli_bad_files_get_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "calibrate", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("netagg model: error:") and "cannot read" in err and len(err.splitlines()) == 1
    (tmp_path / "c.json").write_text("{}")
    assert main(["model", "predict", "--workers", "4", "--costs", str(tmp_path / "c.json")]) == 1
    assert "not a costs file" in capsys.readouterr().err


def test_cli_calibrate_then_plot_writes_costs_table_png_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from netagg.model_fit import record

    ms = _synthetic()  # pairs (ina, ring) of each configuration: every other pair held back
    held = [m for i, m in enumerate(ms) if i % 4 >= 2]
    for name, part in (("fit", [m for i, m in enumerate(ms) if i % 4 < 2]), ("check", held)):
        data = {"kind": "netagg-model-measurements", "measurements": [record(m) for m in part]}
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    argv = ["model", "calibrate", str(tmp_path / "fit.json"), "--check", str(tmp_path / "check.json")]
    assert main([*argv, "--out", str(tmp_path / "costs.json"), "--table", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    assert f"{len(held)} of {len(held)} within 25%" in text
    out = tmp_path / "scale"
    plot = [
        "model",
        "plot",
        "--out",
        str(out),
        "--max-workers",
        "1000",
        "--costs",
        str(tmp_path / "costs.json"),
    ]
    assert main([*plot, "--sizes-mib", "1,64", "--bw-gbit", "100"]) == 0
    data = json.loads((out / "scale.json").read_text())
    assert (out / "scale.png").stat().st_size > 10_000 and (out / "speedup.png").exists()
    assert data["workers"][0] == 8 and data["workers"][-1] == 1000
    big = next(c for c in data["curves"] if c["mib"] == 1)["seconds"]
    assert big["ring"][-1] > big["tree"][-1] > big["ina"][-1]  # 1 MiB at 1,000 workers: latency-bound
