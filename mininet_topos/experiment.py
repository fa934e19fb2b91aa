"""``netagg experiment``: a topology, its switches, and netagg against gloo's ring on the same links.

For each topology shape, link bandwidth and loss level the topology is built in network namespaces
(:mod:`mininet_topos.netns`; with ``forwarding="bridge"`` kernel bridges forward everything and the
Python switch aggregates as a UDP daemon on each switch's address), a plain-TCP check measures what the
forwarding lets through between the two hosts farthest apart, and then for each size and collective
the same hosts run netagg through the switch tree and gloo's ring (torch.distributed over TCP across
the same links and switch nodes), alternating which goes first. Each run reads every link's byte
counters before and after (:mod:`mininet_topos.readouts` sets them beside the theory). Optionally DDP
training on the largest shape (:mod:`mininet_topos.training`). Times are, per repetition, the slowest
host's, and the median over repetitions. Writes ``experiment.json``, ``experiment.png`` and
``topology.json``, printing progress as it goes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mininet_topos.netns import NetnsNetwork
from mininet_topos.readouts import link_report, plot

__all__ = ["ExperimentOptions", "run_experiment", "tcp_check"]

HOSTRUN = [sys.executable, "-m", "mininet_topos.hostrun"]
ROOT = Path(__file__).resolve().parents[1]
CHECK_BOTH = 4 << 20
"""Up to this many elements the first and the last rank check their result against numpy; above it
the first alone (every check rebuilds every rank's input: seconds of CPU at 64 MiB)."""


@dataclass(frozen=True)
class ExperimentOptions:
    """What to sweep and how."""

    sizes_mib: tuple[float, ...] = (1, 4, 16, 64)
    """MiB of float32 per host."""
    losses: tuple[float, ...] = (0.0,)
    """Loss on every link in percent."""
    bandwidths: tuple[float | None, ...] = (None,)
    """Mbit/s on every link (None: as fast as the veth goes)."""
    delay_ms: float | None = None
    """One-way delay on every link (needs tc netem)."""
    link_overrides: tuple[tuple[str, str, float | None, float | None, float], ...] = ()
    """(a, b, bandwidth, delay, loss) for single links, applied after the sweep's values."""
    collectives: tuple[str, ...] = ("allreduce",)
    repeat: int = 3
    elements: int = 2000
    slots: int = 128
    """Slots of the job = each worker's window: 128 packets of 8 KB keep a 100 Mbit/s link busy."""
    min_rto: float | None = 0.2
    """The workers' shortest retransmission timeout (s). The default 20 ms fires spuriously when the
    switch daemons share two CPUs with eight workers (descheduled for tens of ms), and the spurious
    copies then take link time; None: the worker's own default."""
    forwarding: str = "bridge"
    host_nice: int = 5
    """Niceness added to every host process (netagg's workers and gloo's ranks alike), so that the
    switch daemons, which stand for switch hardware, are not starved by the eight hosts on two CPUs
    (the ring's forwarding is the kernel's, in softirq, which no niceness delays)."""
    baseline: bool = True
    """Run gloo's ring beside netagg."""
    tcp_bytes: int = 30_000_000
    """Bytes of the plain-TCP forwarding check (it stops after 20 s whatever it has sent)."""
    train: tuple[str, ...] = ()
    """DDP training workloads on the largest shape: "small" (the demo's MLP), "big"."""
    epochs: int = 3
    extra: dict[str, Any] = field(default_factory=dict)


def run_experiment(
    topo_name: str,
    topo_args: dict[str, int] | list[dict[str, int]],
    sizes_mib: list[float] | None = None,
    losses: list[float] | None = None,
    out_dir: Path = Path("out/experiment"),
    *,
    repeat: int = 3,
    elements: int = 2000,
    slots: int = 128,
    options: ExperimentOptions | None = None,
) -> int:
    """Run the sweep (``options``, or the older positional form) and write the read-outs."""
    from mininet_topos import TOPOS

    opts = options or ExperimentOptions(
        sizes_mib=tuple(sizes_mib or (1,)),
        losses=tuple(losses or (0.0,)),
        repeat=repeat,
        elements=elements,
        slots=slots,
    )
    shapes = topo_args if isinstance(topo_args, list) else [topo_args]
    out_dir.mkdir(parents=True, exist_ok=True)
    largest = max(shapes, key=lambda shape: len(TOPOS[topo_name](**shape).hosts))
    base = TOPOS[topo_name](**largest)
    base.write(out_dir / "topology.json")
    cases = (
        len(shapes) * len(opts.bandwidths) * len(opts.losses) * len(opts.sizes_mib) * len(opts.collectives)
    )
    print(
        f"netagg experiment: {topo_name} {shapes}, {opts.forwarding} forwarding, bandwidths "
        f"{list(opts.bandwidths)} Mbit/s, losses {list(opts.losses)} %; {cases} cases "
        f"({'netagg and the ring' if opts.baseline else 'netagg'}) into {out_dir}",
        flush=True,
    )
    progress = _Progress(cases)
    runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    for shape in shapes:
        for bw in opts.bandwidths:
            for loss in opts.losses:
                topo = TOPOS[topo_name](**shape).with_links(
                    bandwidth_mbit=bw, delay_ms=opts.delay_ms, loss_percent=loss
                )
                for a, b, obw, odelay, oloss in opts.link_overrides:
                    topo = topo.with_link(a, b, bandwidth_mbit=obw, delay_ms=odelay, loss_percent=oloss)
                with NetnsNetwork(topo, forwarding=opts.forwarding) as net:
                    net.start_switches(elements=opts.elements, slots=opts.slots, ingress_loss=loss / 100)
                    checks.append(
                        {**tcp_check(net, opts.tcp_bytes), "bandwidth_mbit": bw, "loss_percent": loss}
                    )
                    print(f"  TCP check: {_tcp_line(checks[-1])}", flush=True)
                    for k, mib in enumerate(opts.sizes_mib):
                        for coll in opts.collectives:
                            run = _case(net, mib, coll, opts, ring_first=k % 2 == 1)
                            runs.append({"bandwidth_mbit": bw, "loss_percent": loss, **run})
                            progress.line(run)
                            partial = {"runs": runs, "tcp_checks": checks, "complete": False}
                            (out_dir / "experiment.json").write_text(json.dumps(partial, indent=1))
                    if (
                        opts.train
                        and shape is largest
                        and bw == opts.bandwidths[0]
                        and loss == opts.losses[0]
                    ):
                        from mininet_topos.training import train_both

                        for model in opts.train:
                            training.append(
                                train_both(net, model, opts.epochs, out_dir, opts.host_nice, opts.min_rto)
                            )
    summary = {
        "topology": base.name,
        "hosts": len(base.hosts),
        "switches": len(base.switches),
        "shapes": shapes,
        "forwarding": opts.forwarding,
        "elements_per_packet": opts.elements,
        "slots": opts.slots,
        "repeat": opts.repeat,
        "delay_ms": opts.delay_ms,
        "link_overrides": [list(o) for o in opts.link_overrides],
        "tcp_checks": checks,
        "runs": runs,
        "training": training,
        "complete": True,
        "options": {k: v for k, v in asdict(opts).items() if k != "extra"},
        "machine": _machine(),
    }
    (out_dir / "experiment.json").write_text(json.dumps(summary, indent=1))
    plot(summary, out_dir / "experiment.png")
    print(f"wrote {out_dir / 'experiment.json'} and {out_dir / 'experiment.png'}", flush=True)
    return 0


def _machine() -> dict[str, Any]:
    import os

    return {"cpus": os.cpu_count(), "load_average": os.getloadavg()}


class _Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()

    def line(self, run: dict[str, Any]) -> None:
        self.done += 1
        ring = run.get("ring")
        text = f"netagg {run['netagg']['seconds'] * 1e3:.0f} ms"
        if ring:
            text += f", ring {ring['seconds'] * 1e3:.0f} ms, speed-up {run['speedup']:.2f}x"
        print(
            f"[{self.done}/{self.total}] {run['workers']} workers, {run['collective']} {run['mib']:g} MiB: "
            f"{text} ({time.monotonic() - self.t0:.0f} s)",
            flush=True,
        )


def _tcp_line(c: dict[str, Any]) -> str:
    share = f" ({c['of_link']:.0%} of the link)" if c.get("of_link") else ""
    return f"{len(c['flows'])} flows as the ring sends, {c['forwarding']} forwarding: slowest " + (
        f"{c['slowest_mbit_per_s']:.1f} Mbit/s{share}"
    )


def tcp_check(net: NetnsNetwork, nbytes: int, port: int = 5001) -> dict[str, Any]:
    """Plain TCP (Python sockets) as the ring sends: every host to the next one at once (the last to
    the first), across every switch between them. Per flow Mbit/s; the slowest flow as a share of the
    slowest link's rate says whether the switch nodes' forwarding would limit the ring."""
    hosts = net.topo.hosts
    pairs = [(hosts[k], hosts[(k + 1) % len(hosts)]) for k in range(len(hosts))]
    if len(hosts) == 2:
        pairs = pairs[:1]
    receivers = [
        net.popen(
            b.name, [*HOSTRUN, "tcp-recv", "--listen", f"{b.ip}:{port}"], stdout=subprocess.PIPE, cwd=ROOT
        )
        for _, b in pairs
    ]
    senders = []
    try:
        for rx in receivers:
            assert rx.stdout is not None
            rx.stdout.readline()  # listening
        senders = [
            net.popen(
                a.name,
                [*HOSTRUN, "tcp-send", "--to", f"{b.ip}:{port}", "--bytes", str(nbytes)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=ROOT,
            )
            for a, b in pairs
        ]
        for tx in senders:
            _, err = tx.communicate(timeout=60)
            if tx.returncode != 0:
                raise RuntimeError(f"the TCP check's sender failed: {err.strip()[-500:]}")
        flows = [json.loads(rx.communicate(timeout=30)[0].strip().splitlines()[-1]) for rx in receivers]
    finally:
        for p in [*receivers, *senders]:
            if p.poll() is None:
                p.kill()
                p.wait()
    rates = [lk.bandwidth_mbit for lk in net.topo.links if lk.bandwidth_mbit]
    link = min(rates) if rates else None
    slowest = min(f["mbit_per_s"] for f in flows)
    return {
        "flows": [f"{a.name}->{b.name}" for a, b in pairs],
        "forwarding": net.forwarding,
        "bytes": nbytes,
        "mbit_per_s": [round(f["mbit_per_s"], 2) for f in flows],
        "slowest_mbit_per_s": slowest,
        "link_mbit": link,
        "of_link": slowest / link if link else None,
    }


def _case(
    net: NetnsNetwork, mib: float, coll: str, opts: ExperimentOptions, ring_first: bool
) -> dict[str, Any]:
    w = len(net.topo.hosts)
    size = max(w, int(mib * (1 << 20) / 4) // w * w)  # a multiple of W: reduce-scatter's shards
    impls = ["netagg", "gloo"] if opts.baseline else ["netagg"]
    if ring_first:
        impls.reverse()
    out: dict[str, Any] = {"workers": w, "collective": coll, "mib": mib, "elements": size}
    for impl in impls:
        print(f"  {w} workers, {coll} {mib:g} MiB: {impl} x {opts.repeat} ...", flush=True)
        before = net.link_bytes()
        reports = _run_hosts(net, impl, coll, size, opts)
        after = net.link_bytes()
        per_rep = [max(ts) for ts in zip(*(r["times_s"] for r in reports), strict=True)]
        result = {
            "seconds": sorted(per_rep)[len(per_rep) // 2],
            "times_s": per_rep,
            "checked": [r["rank"] for r in reports if "check" in r],
            "ok": all(r["check"]["ok"] for r in reports if "check" in r),
            "max_err": max((r["check"]["max_err"] for r in reports if "check" in r), default=0.0),
            "links": link_report(net.topo, impl, coll, 4 * size, before, after, opts.repeat),
        }
        if impl == "netagg":
            result["retransmissions"] = sum(r["worker"].get("retransmissions", 0) for r in reports)
        if not result["ok"]:
            raise RuntimeError(f"{impl} {coll} at {mib} MiB gave a wrong result: {reports}")
        out["netagg" if impl == "netagg" else "ring"] = result
    if "ring" in out:
        out["speedup"] = out["ring"]["seconds"] / out["netagg"]["seconds"]
    return out


_port = [29500]


def _run_hosts(
    net: NetnsNetwork, impl: str, coll: str, size: int, opts: ExperimentOptions
) -> list[dict[str, Any]]:
    """Every host runs ``hostrun collective`` (``repeat`` timed calls); the first and last ranks check
    their first result (the first alone above ``CHECK_BOTH``). Returns each host's report, in rank
    order."""
    topo = net.topo
    w = len(topo.hosts)
    _port[0] += 1
    procs = []
    for rank, host in enumerate(topo.hosts):
        cmd = [
            *("nice", "-n", str(opts.host_nice)),
            *HOSTRUN,
            "collective",
            *("--impl", impl, "--collective", coll, "--rank", str(rank), "--world-size", str(w)),
            *("--size", str(size), "--repeat", str(opts.repeat)),
            *(["--check"] if rank == 0 or (rank == w - 1 and size <= CHECK_BOTH) else []),
        ]
        if impl == "netagg":
            args = net.worker_args(rank)
            cmd += ["--switch", args[1], "--worker-id", args[args.index("--worker-id") + 1]]
            cmd += ["--no-batch"] if "--no-batch" in args else []
            cmd += ["--min-rto", str(opts.min_rto)] if opts.min_rto is not None else []
        else:
            cmd += ["--master", f"{topo.hosts[0].ip}:{_port[0]}"]
        procs.append(net.popen(host.name, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT))
    reports = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=1800)
            if p.returncode != 0:
                raise RuntimeError(f"a {impl} host failed ({coll}, {size} elements): {err.strip()[-1500:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return reports
