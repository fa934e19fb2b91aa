"""``netagg model``: the scale model (:mod:`netagg.model`): predict, measure, calibrate, plot."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from netagg.cli._common import _int_range

__all__ = ["add_parser"]

EXAMPLES = """\
examples:
  netagg model predict --workers 1024 --fan-in 32 --size-mib 64 --bw-mbit 100000 --latency-us 1
  sudo netagg model measure --out out/model            # fit/ and check/ runs (minutes)
  netagg model calibrate out/model/fit/loopback.json --check out/model/check/loopback.json \\
       --out out/model/loopback-costs.json --table out/model/loopback-check.md
  netagg model plot --costs out/model/loopback-costs.json --out out/model/scale"""

COSTS_KIND = "netagg-model-costs"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _percent(text: str) -> float:
    value = _non_negative(text)
    if value >= 100:
        raise argparse.ArgumentTypeError(f"{value} is not a percentage below 100")
    return value


def _numbers(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def add_parser(sub: Any) -> None:
    """Add ``netagg model`` and its commands to the subcommands ``sub``."""
    from netagg.cli._common import _Parser

    m = sub.add_parser(
        "model",
        help="the scale model: ring, tree and INA times from workers, links and costs",
        epilog=EXAMPLES,
    )
    cmds = m.add_subparsers(dest="model_command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = cmds.add_parser(
        "predict",
        help="predicted times of ring, tree and INA for one configuration",
        epilog="examples:\n  netagg model predict --workers 8 --size-mib 64 --bw-mbit 100 --costs costs.json",
    )
    p.add_argument("--workers", type=_int_range(1, 10**7), required=True, help="hosts, one worker each")
    p.add_argument("--size-mib", type=_positive, default=64.0, help="MiB per host (default 64)")
    p.add_argument(
        "--bw-mbit", type=_positive, default=None, help="host link rate in Mbit/s (default: no bound)"
    )
    p.add_argument("--latency-us", type=_non_negative, default=None, help="one-way link latency in µs")
    p.add_argument("--loss", type=_percent, default=0.0, help="loss on every link in percent")
    p.add_argument("--fan-in", type=_int_range(0, 10**6), default=0, help="INA switch fan-in (0: one switch)")
    p.add_argument("--payload", type=_int_range(4, 65000), default=8000, help="INA payload bytes per packet")
    p.add_argument("--mtu", type=_int_range(576, 65536), default=9000, help="link MTU (default 9000)")
    _costs_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_predict)

    s = cmds.add_parser(
        "measure",
        help="run the calibration and held-back runs (loopback, and the emulator as root)",
        epilog="examples:\n  sudo netagg model measure --out out/model\n  netagg model measure --no-emulator",
    )
    s.add_argument("--out", type=Path, default=Path("out/model"), help="folder: fit/ and check/ go in it")
    s.add_argument("--repeat", type=_int_range(1, 50), default=3, help="calls per case; times are medians")
    s.add_argument(
        "--cores", type=_int_range(1, 1024), default=None, help="CPU cores (default: this machine's)"
    )
    s.add_argument("--no-emulator", action="store_true", help="loopback runs only (no root needed)")
    s.add_argument("--no-loopback", action="store_true", help="emulator runs only")
    s.add_argument("--only", choices=("fit", "check"), help="run one of the two sets")
    s.set_defaults(run=_measure)

    c = cmds.add_parser(
        "calibrate",
        help="fit the model's costs to measured runs; check them on held-back runs",
        epilog="examples:\n  netagg model calibrate fit.json --check check.json --out c.json --table t.md",
    )
    c.add_argument(
        "files", type=Path, nargs="+", help="measurements to fit (experiment.json, results.json, ...)"
    )
    c.add_argument("--check", type=Path, nargs="*", default=[], help="held-back measurements to check on")
    c.add_argument("--cores", type=_int_range(1, 1024), default=2, help="cores of files that do not say (2)")
    c.add_argument("--out", type=Path, default=None, help="write the fitted costs here (JSON)")
    c.add_argument("--table", type=Path, default=None, help="write the held-back table here (Markdown)")
    c.set_defaults(run=_calibrate)

    g = cmds.add_parser(
        "plot",
        help="predicted time and INA speed-up from 8 to 100,000 workers (PNG + JSON)",
        epilog="examples:\n  netagg model plot --out out/model/scale --sizes-mib 1,64 --bw-gbit 10,100",
    )
    g.add_argument("--out", type=Path, required=True, help="folder for scale.png and scale.json")
    g.add_argument("--sizes-mib", type=_numbers, default=[1.0, 64.0, 1024.0], help="MiB per host")
    g.add_argument("--bw-gbit", type=_numbers, default=[10.0, 100.0], help="link rates in Gbit/s")
    g.add_argument("--fan-in", type=_int_range(2, 1024), default=32, help="INA switch fan-in (default 32)")
    g.add_argument("--latency-us", type=_non_negative, default=1.0, help="one-way link latency (default 1)")
    g.add_argument("--step-us", type=_non_negative, default=5.0, help="ring/tree software latency per step")
    g.add_argument("--max-workers", type=_int_range(16, 10**7), default=100_000, help="last x (100,000)")
    _costs_flag(g, "also draw INA with netagg's calibrated hosts and Python switch")
    g.set_defaults(run=_plot)


def _costs_flag(p: argparse.ArgumentParser, what: str = "calibrated costs (JSON of calibrate --out)") -> None:
    p.add_argument("--costs", type=Path, default=None, help=what)


def load_costs(path: Path) -> Any:
    """The costs in ``path`` (``calibrate --out``)."""
    from netagg.model import Costs

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--costs {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != COSTS_KIND:
        raise ValueError(f"--costs {path}: not a costs file of `netagg model calibrate --out`")
    try:
        return Costs(**data["costs"])
    except TypeError as exc:
        raise ValueError(f"--costs {path}: {exc}") from None


def _predict(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from netagg.model import ALGORITHMS, COLLECTIVES, Config, Costs, predict

    costs = load_costs(args.costs) if args.costs else Costs()
    costs = replace(costs, cores=None)  # a cluster: each host its own CPU
    cfg = Config(
        workers=args.workers,
        size_bytes=args.size_mib * (1 << 20),
        bandwidth_bps=args.bw_mbit * 1e6 if args.bw_mbit else math.inf,
        link_latency_s=args.latency_us / 1e6 if args.latency_us is not None else None,
        loss=args.loss / 100,
        fan_in=args.fan_in,
        payload_bytes=args.payload,
        mtu=args.mtu,
    )
    rows = [
        {"algorithm": a, "collective": c, **vars(predict(a, c, cfg, costs))}
        for c in COLLECTIVES
        for a in ALGORITHMS
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'collective':<15}{'algorithm':<10}{'time (ms)':>12}{'steps':>8}{'MiB/host':>10}  bottleneck")
    for r in rows:
        print(
            f"{r['collective']:<15}{r['algorithm']:<10}{r['seconds'] * 1e3:>12.3f}{r['steps']:>8}"
            f"{r['bytes_per_host'] / (1 << 20):>10.2f}  {r['bottleneck']}"
        )
    return 0


def _measure(args: argparse.Namespace) -> int:
    import os

    from mininet_topos.calibration import CHECK, FIT, measure

    emulate = not args.no_emulator
    if emulate and os.geteuid() != 0:
        raise ValueError("the emulator runs need root (network namespaces); give --no-emulator to skip them")
    cores = args.cores or os.cpu_count() or 1
    for name, plan in (("fit", FIT), ("check", CHECK)):
        if args.only in (None, name):
            kinds = [p for p in plan if not (args.no_loopback and p[0] == "loopback")]
            ms = measure(kinds, args.out / name, reps=args.repeat, cores=cores, with_emulator=emulate)
            print(f"wrote {len(ms)} measurements into {args.out / name}", flush=True)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from netagg.model_fit import cpu_table, fit, load, table

    measurements = load(args.files, cores=args.cores)
    result = fit(measurements)
    costs = result.costs
    print(
        f"fitted on {len(measurements)} measurements, rms relative error "
        f"{result.rms_relative_error:.1%} ({result.iterations} rounds)"
    )
    for k, v in costs.as_dict().items():
        print(f"  {k:<18}{v}")
    if result.unidentified:
        print(f"  not determined by these runs (left at 0): {', '.join(result.unidentified)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "kind": COSTS_KIND,
            "costs": costs.as_dict(),
            "fit": {
                "files": [str(f) for f in args.files],
                "rms_relative_error": result.rms_relative_error,
                "unidentified": list(result.unidentified),
            },
        }
        args.out.write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.out}")
    if args.check:
        held = load(args.check, cores=args.cores)
        text = markdown(table(held, costs))
        cpu = cpu_table(held, costs)
        if cpu:
            text += "\nCPU seconds per call, predicted against measured:\n\n" + markdown(cpu, time=False)
        print(text)
        if args.table:
            args.table.parent.mkdir(parents=True, exist_ok=True)
            args.table.write_text(text)
            print(f"wrote {args.table}")
    elif args.table:
        raise ValueError("--table needs --check (the held-back measurements)")
    return 0


def markdown(rows: list[dict[str, Any]], *, time: bool = True) -> str:
    """The held-back table: predicted against measured, and how many are within 25%."""
    what = "" if time else " CPU"
    lines = [
        f"| configuration | measured{what} (ms) | predicted{what} (ms) | error |"
        + (" bottleneck |" if time else ""),
        "|---|---:|---:|---:|" + ("---|" if time else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['configuration']} | {r['measured_s'] * 1e3:.1f} | {r['predicted_s'] * 1e3:.1f} | "
            f"{r['relative_error']:+.0%} |" + (f" {r['bottleneck']} |" if time else "")
        )
    within = sum(abs(r["relative_error"]) <= 0.25 for r in rows)
    lines.append("")
    lines.append(f"{within} of {len(rows)} within 25%.")
    return "\n".join(lines) + "\n"


def _plot(args: argparse.Namespace) -> int:
    from netagg.model_plot import scale

    costs = load_costs(args.costs) if args.costs else None
    png, js = scale(
        args.out,
        sizes_mib=args.sizes_mib,
        rates_gbit=args.bw_gbit,
        fan_in=args.fan_in,
        latency_s=args.latency_us / 1e6,
        step_s=args.step_us / 1e6,
        max_workers=args.max_workers,
        netagg_costs=costs,
    )
    print(f"wrote {png} and {js}", file=sys.stderr)
    return 0
