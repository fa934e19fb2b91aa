"""``netagg ctl``: the controller's command-line client (jobs, switches, stats), as tables or JSON.

    netagg ctl create --name resnet --workers 4 [--type float32] [--elements N] [--slots S]
    netagg ctl jobs | get JOB | delete [--force] JOB | switches
    netagg ctl stats [--interval 1] [--count N] [JOB ...]

The controller is ``--controller HOST:PORT`` (default $NETAGG_CONTROLLER, else 127.0.0.1:47100); the
token is ``--token``, ``--token-file`` or $NETAGG_TOKEN. A controller that does not answer is reported
on stderr at once and tried again, with doubling waits, for ``--retry-for`` seconds. A refused call
prints one line with its gRPC status and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from netagg.cli._common import _auth_flags

__all__ = ["add_parser", "run_ctl"]

CONTROLLER_ENV = "NETAGG_CONTROLLER"

EXAMPLES = """\
examples:
  netagg ctl --token-file tokens create --name resnet --workers 4 --slots 16
  netagg ctl --token-file tokens create --name tree --workers 4 --workers-at leaf1=2,leaf2=2
  netagg ctl jobs
  netagg ctl --json get j-1a2b3c4d
  netagg ctl delete j-1a2b3c4d
  netagg ctl delete --force j-1a2b3c4d     # even while its workers run
  netagg ctl switches
  netagg ctl stats --interval 1 --count 5 j-1a2b3c4d"""


def add_parser(sub: Any) -> None:
    """Add ``netagg ctl`` and its verbs to the subcommands ``sub``."""
    from netagg.protocol import DEFAULT_CONTROLLER_PORT

    p = sub.add_parser("ctl", help="talk to the controller: jobs, switches, stats", epilog=EXAMPLES)
    p.add_argument(
        "--controller",
        default=os.environ.get(CONTROLLER_ENV, f"127.0.0.1:{DEFAULT_CONTROLLER_PORT}"),
        metavar="HOST:PORT",
        help=f"the controller (default ${CONTROLLER_ENV}, else 127.0.0.1:{DEFAULT_CONTROLLER_PORT})",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    p.add_argument(
        "--retry-for",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to keep trying a controller that does not answer (default 10)",
    )
    _auth_flags(p, server=False)
    p.set_defaults(run=run_ctl)
    verbs = p.add_subparsers(dest="verb", required=True, parser_class=type(p))
    c = verbs.add_parser(
        "create",
        help="create a job",
        epilog="example:\n  netagg ctl create --name resnet --workers 4 --type float32 --slots 16",
    )
    c.add_argument("--name", required=True, help="the job's name (for people; the controller gives it an id)")
    c.add_argument("--workers", type=int, required=True, help="workers (ranks) in the job")
    c.add_argument(
        "--type", choices=("float32", "int32"), default="float32", help="element type (default float32)"
    )
    c.add_argument("--elements", type=int, default=0, help="elements per packet (default: the switch's)")
    c.add_argument(
        "--slots", type=int, default=0, help="slots = each worker's window (default: the controller's)"
    )
    c.add_argument(
        "--workers-at",
        default="",
        metavar="SWITCH=N,...",
        help="workers behind each leaf switch, for a job aggregated as a tree (e.g. leaf1=2,leaf2=2)",
    )
    verbs.add_parser("jobs", help="list jobs", epilog="example:\n  netagg ctl --json jobs")
    g = verbs.add_parser("get", help="one job", epilog="example:\n  netagg ctl get j-1a2b3c4d")
    g.add_argument("job_id", help="the job's id (j-...)")
    d = verbs.add_parser("delete", help="delete a job", epilog="example:\n  netagg ctl delete j-1a2b3c4d")
    d.add_argument("job_id", help="the job's id (j-...)")
    d.add_argument(
        "--force", action="store_true", help="delete it even while it is running (its workers then fail)"
    )
    verbs.add_parser("switches", help="list switches", epilog="example:\n  netagg ctl switches")
    s = verbs.add_parser(
        "stats",
        help="stream job and switch statistics: per-job rates over each interval",
        epilog="example:\n  netagg ctl stats --interval 2 --count 10 j-1a2b3c4d",
    )
    s.add_argument("job_ids", nargs="*", help="jobs to follow (default: every job the token sees)")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between snapshots (default 1)")
    s.add_argument("--count", type=int, default=0, help="stop after this many snapshots (0: until Ctrl-C)")


def run_ctl(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from host_agent.join import wait_for_controller
    from netagg.rpc import channel, read_token
    from netagg.v1 import control_pb2 as pb
    from netagg.v1 import control_pb2_grpc as pb_grpc

    token = read_token(args.token, args.token_file)
    if args.timeout <= 0 or args.retry_for < 0:
        raise ValueError("--timeout must be > 0 and --retry-for >= 0 seconds")

    def show(msg: Any, table: Callable[[Any], str]) -> None:
        if args.json:
            print(
                json.dumps(json_format.MessageToDict(msg, preserving_proto_field_name=True), sort_keys=True)
            )
        else:
            print(table(msg))

    with channel(args.controller, token, tls_ca=args.tls_ca) as ch:
        try:
            wait_for_controller(
                ch,
                args.controller,
                args.retry_for,
                report=lambda line: print(line, file=sys.stderr, flush=True),
            )
        except RuntimeError as exc:  # NetAggError: still unreachable
            print(f"netagg ctl {args.verb}: {exc}", file=sys.stderr)
            return 1
        stub = pb_grpc.ControllerStub(ch)
        t = args.timeout
        try:
            if args.verb == "create":
                etype = pb.ELEMENT_TYPE_FLOAT32 if args.type == "float32" else pb.ELEMENT_TYPE_INT32
                if args.workers < 0 or args.elements < 0 or args.slots < 0:
                    raise ValueError("--workers, --elements and --slots must not be negative")
                workers_at = {}
                for item in filter(None, args.workers_at.split(",")):
                    switch, sep, count = item.partition("=")
                    if not sep or not count.isdigit():
                        raise ValueError(f"--workers-at: expected SWITCH=N,..., got {item!r}")
                    workers_at[switch] = int(count)
                spec = pb.JobSpec(
                    name=args.name,
                    workers=args.workers,
                    element_type=etype,
                    elements_per_packet=args.elements,
                    slots=args.slots,
                    workers_at=workers_at,
                )
                show(stub.CreateJob(pb.CreateJobRequest(spec=spec), timeout=t), lambda j: _jobs_table([j]))
            elif args.verb == "jobs":
                show(stub.ListJobs(pb.ListJobsRequest(), timeout=t), lambda r: _jobs_table(r.jobs))
            elif args.verb == "get":
                show(stub.GetJob(pb.GetJobRequest(job_id=args.job_id), timeout=t), lambda j: _jobs_table([j]))
            elif args.verb == "delete":
                stub.DeleteJob(pb.DeleteJobRequest(job_id=args.job_id, force=args.force), timeout=t)
                print(json.dumps({"deleted": args.job_id}) if args.json else f"deleted {args.job_id}")
            elif args.verb == "switches":
                show(
                    stub.ListSwitches(pb.ListSwitchesRequest(), timeout=t),
                    lambda r: _switches_table(r.switches),
                )
            else:
                n = 0
                req = pb.StreamStatsRequest(interval_seconds=args.interval, job_ids=args.job_ids)
                stream = stub.StreamStats(req)
                rates = Rates()
                try:
                    for snap in stream:
                        show(snap, rates.table)
                        n += 1
                        if args.count and n >= args.count:
                            break
                finally:
                    stream.cancel()
        except grpc.RpcError as exc:
            print(f"netagg ctl {args.verb}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def _table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _jobs_table(jobs: Any) -> str:
    from netagg.v1 import control_pb2 as pb

    rows = []
    for j in jobs:
        where = ", ".join(f"{p.switch_id}[{p.slot_base}:{p.slot_base + p.slots}]" for p in j.placements)
        rows.append(
            [
                j.job_id,
                j.spec.name,
                j.owner,
                pb.JobState.Name(j.state).removeprefix("JOB_STATE_").lower(),
                j.wire_job_id,
                f"{len(j.joined_ranks)}/{j.spec.workers}",
                pb.ElementType.Name(j.spec.element_type).removeprefix("ELEMENT_TYPE_").lower(),
                j.spec.elements_per_packet,
                where,
            ]
        )
    heads = ["JOB", "NAME", "OWNER", "STATE", "WIRE", "JOINED", "TYPE", "ELEMENTS", "SLOTS"]
    notes = [f"{j.job_id}: {j.state_detail}" for j in jobs if j.state_detail]
    return "\n".join([_table(heads, rows), *notes])


def _switches_table(switches: Any) -> str:
    from netagg.v1 import control_pb2 as pb

    rows = [
        [
            s.switch_id,
            pb.SwitchState.Name(s.state).removeprefix("SWITCH_STATE_").lower(),
            s.info.kind,
            s.data_address,
            s.agent_address,
            f"{s.free_slots}/{s.info.total_slots}",
            s.jobs,
            f"{s.info.min_elements_per_packet}-{s.info.max_elements_per_packet}",
            s.info.max_workers,
        ]
        for s in switches
    ]
    heads = ["SWITCH", "STATE", "KIND", "DATA", "AGENT", "FREE SLOTS", "JOBS", "ELEMENTS", "MAX WORKERS"]
    notes = [f"{s.switch_id}: last health check failed: {s.last_error}" for s in switches if s.last_error]
    return "\n".join([_table(heads, rows), *notes])


class Rates:
    """Turns StreamStats snapshots into tables; the per-job rates are over the time since the snapshot
    before (none for the first, or after a switch's counters went back: it restarted)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[float, int, int, int]] = {}

    def rates(self, snap: Any) -> list[list[object]]:
        """One row per job and switch that counts per job: packets/s, MB/s, completions/s, drops, the
        members of its round there and its epoch."""
        rows: list[list[object]] = []
        seen = {}
        for c in snap.job_counters:
            key = (c.job_id, c.switch_id)
            now = (
                snap.time,
                c.counters.get("packets_in", 0),
                c.counters.get("bytes_in", 0),
                c.counters.get("completions", 0),
            )
            seen[key] = now
            before = self._last.get(key)
            dt = now[0] - before[0] if before is not None else 0.0
            if before is None or dt <= 0 or any(n < b for n, b in zip(now[1:], before[1:], strict=True)):
                pps = mbs = cps = "-"
            else:
                pps = f"{(now[1] - before[1]) / dt:.0f}"
                mbs = f"{(now[2] - before[2]) / dt / 1e6:.2f}"
                cps = f"{(now[3] - before[3]) / dt:.0f}"
            rows.append([c.job_id, c.switch_id, pps, mbs, cps, sum(c.drops.values()), c.joined, c.epoch])
        self._last = seen
        return rows

    def table(self, snap: Any) -> str:
        import time

        lines = [time.strftime("%H:%M:%S", time.localtime(snap.time))]
        keys = ("packets_in", "packets_out", "contributions", "completions", "repeats")
        rows = []
        for sw_id, c in sorted(snap.switch_counters.items()):
            drops = sum(c.drops.values())
            rows.append([sw_id, *(c.counters.get(k, 0) for k in keys), drops])
        lines.append(_table(["SWITCH", *(k.upper() for k in keys), "DROPS"], rows))
        per_job = self.rates(snap)
        if per_job:
            heads = ["JOB", "SWITCH", "PACKETS/S", "MB/S", "COMPLETIONS/S", "DROPS", "JOINED", "EPOCH"]
            lines.append(_table(heads, per_job))
        lines.append(_jobs_table(snap.jobs))
        return "\n".join(lines)
