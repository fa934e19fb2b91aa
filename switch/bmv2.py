"""The BMv2 driver: runs `simple_switch` with netagg's P4 program and serves the SwitchAgent API for it.

:class:`Bmv2Process` starts ``simple_switch`` on given interfaces, waits until its Thrift runtime
answers (polling, never sleep-and-hope), runs runtime commands through ``simple_switch_CLI`` and stops
the switch by PID. :class:`Bmv2Agent` implements proto/netagg/v1's SwitchAgent over it: a job becomes an
entry of the ``jobs`` table, its workers entries of ``workers`` (source check) and ``replicas`` (egress
rewrite), and a multicast group with one node per worker; counters are the P4 ``drops`` and ``events``
counters, whose indices are read from p4/include/config.p4.

Binaries are looked up under $NETAGG_P4_PREFIX/bin first, then on PATH.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from netagg import __version__
from netagg.protocol import MAX_WORKERS
from netagg.v1 import control_pb2 as pb
from netagg.v1 import control_pb2_grpc as pb_grpc
from switch.agent import job_config, send_address
from switch.core import JobConfig, check_disjoint

__all__ = [
    "P4_DIR",
    "Bmv2Agent",
    "Bmv2Error",
    "Bmv2Process",
    "HostPort",
    "compile_p4",
    "find_binary",
    "p4_constants",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

P4_DIR = Path(__file__).resolve().parent.parent / "p4"
PREFIX_ENV = "NETAGG_P4_PREFIX"
LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "off")  # simple_switch --log-level


def find_binary(name: str) -> str | None:
    """``$NETAGG_P4_PREFIX/bin/<name>`` if it exists, else ``name`` on PATH, else None."""
    prefix = os.environ.get(PREFIX_ENV)
    if prefix:
        candidate = Path(prefix) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def _cli_env() -> dict[str, str]:
    """simple_switch_CLI imports its Thrift bindings from the install prefix's site-packages."""
    env = dict(os.environ)
    prefix = os.environ.get(PREFIX_ENV)
    if prefix:
        extra = [str(p) for p in sorted(Path(prefix, "lib").glob("python3*/site-packages"))]
        extra += [str(p) for p in sorted(Path(prefix, "lib").glob("python3*/dist-packages"))]
        if extra:
            env["PYTHONPATH"] = os.pathsep.join([*extra, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def p4_constants(config: Path | None = None) -> dict[str, int]:
    """The ``#define NAME number`` lines of p4/include/config.p4."""
    text = (config or P4_DIR / "include" / "config.p4").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"^#define\s+(\w+)\s+(\d+)\s*$", text, re.M)}


def _counter_names(prefix: str, constants: Mapping[str, int]) -> dict[int, str]:
    return {v: k[len(prefix) :].lower() for k, v in constants.items() if k.startswith(prefix)}


def _short_names(json_path: Path) -> dict[str, str]:
    """Table and action names of a compiled program by their last component ("jobs" ->
    "NetaggIngress.validate.jobs"), as simple_switch_CLI wants them in full."""
    import json

    program = json.loads(json_path.read_text())
    names: dict[str, str] = {}
    for pipeline in program["pipelines"]:
        for table in pipeline["tables"]:
            names.setdefault(table["name"].rsplit(".", 1)[-1], table["name"])
    for action in program["actions"]:
        names.setdefault(action["name"].rsplit(".", 1)[-1], action["name"])
    return names


class Bmv2Error(OSError):
    """simple_switch failed to start, or a runtime command failed."""


class Bmv2Process:
    """``simple_switch`` as a child process.

    Args:
        json_path: the compiled program (``make p4`` writes build/p4/netagg.json).
        interfaces: BMv2 port number -> Linux interface.
        thrift_port: the runtime's TCP port (default: a free one).
        log_file: where simple_switch logs (default: nowhere; its logging costs throughput).
        log_level: simple_switch's ``--log-level``. Default: ``"trace"`` with a log file, else
            ``"off"``. simple_switch's own default is ``"trace"``, and on a BMv2 built with its
            logging macros (the default configure) it then formats every trace message of every
            packet even with no log to write: about half of its time (bench/bmv2.py).
        ready_timeout: seconds to wait for the runtime to answer.
    """

    def __init__(
        self,
        json_path: Path,
        interfaces: Mapping[int, str],
        *,
        thrift_port: int | None = None,
        log_file: Path | None = None,
        log_level: str | None = None,
        ready_timeout: float = 30.0,
        device_id: int = 0,
    ) -> None:
        if log_level is None:
            log_level = "off" if log_file is None else "trace"
        if log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}")
        binary = find_binary("simple_switch")
        self._cli = find_binary("simple_switch_CLI")
        if binary is None or self._cli is None:
            raise Bmv2Error(
                f"simple_switch and simple_switch_CLI are needed (on PATH or in ${PREFIX_ENV}/bin)"
            )
        if not Path(json_path).is_file():
            raise Bmv2Error(f"{json_path} does not exist (run `make p4`)")
        if thrift_port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                thrift_port = int(s.getsockname()[1])
        self.thrift_port = thrift_port
        self.json_path = Path(json_path)
        cmd = [binary, "--device-id", str(device_id), "--thrift-port", str(thrift_port)]
        for port, iface in sorted(interfaces.items()):
            cmd += ["-i", f"{port}@{iface}"]
        cmd += ["--log-level", log_level]
        if log_file is not None:
            cmd += ["--log-file", str(log_file), "--log-flush"]
        cmd.append(str(json_path))
        self._stderr = open(os.devnull, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self._lock = threading.Lock()
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise Bmv2Error(f"simple_switch exited with {self.proc.returncode}: {err.strip()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.thrift_port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            self.cli(["show_ports"])  # the runtime answers commands: ready
            return
        raise Bmv2Error(
            f"simple_switch's runtime did not answer on port {self.thrift_port} within {timeout}s"
        )

    def cli(self, commands: Sequence[str], *, check: bool = True) -> list[str]:
        """Run runtime commands in one ``simple_switch_CLI`` session; returns each command's output.
        Raises :class:`Bmv2Error` naming the command if one failed (unless ``check`` is false)."""
        assert self._cli is not None
        with self._lock:
            r = subprocess.run(
                [self._cli, "--thrift-port", str(self.thrift_port)],
                input="\n".join(commands) + "\n",
                capture_output=True,
                text=True,
                env=_cli_env(),
                timeout=60,
                check=False,
            )
        if r.returncode != 0 and not r.stdout:
            raise Bmv2Error(f"simple_switch_CLI failed: {r.stderr.strip()[-2000:]}")
        # The CLI prints a prompt before each command's output; the first chunk is its banner.
        outputs = r.stdout.split("RuntimeCmd:")[1 : len(commands) + 1]
        if check:
            for command, out in zip(commands, outputs, strict=False):
                if re.search(r"^\s*(Error|Invalid|Exception)", out, re.M) or "Traceback" in out:
                    raise Bmv2Error(f"`{command}` failed: {out.strip()}")
        return outputs

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self._stderr.close()

    def __enter__(self) -> Bmv2Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class HostPort:
    """A host attached to the switch: its IPv4 and MAC addresses and the BMv2 port it is behind."""

    ip: str
    mac: str
    port: int


@dataclass
class _Job:
    cfg: JobConfig
    index: int
    job_handle: int
    workers: list[int] = field(default_factory=list)  # handles in the workers table
    replicas: list[int] = field(default_factory=list)  # handles in the replicas table
    nodes: list[int] = field(default_factory=list)  # multicast node handles
    parent_entries: list[tuple[str, int]] = field(default_factory=list)  # (table, handle)
    parent_node: int | None = None


_HANDLE = re.compile(r"handle (\d+)")
# simple_switch_CLI answers counter_read with "drops[3]= (96 bytes, 2 packets)"
_COUNTER = re.compile(r"\((\d+) bytes, (\d+) packets\)")
# ... and register_read with "reg_job[0]= 1099511627776"
_REGISTER = re.compile(r"\]=\s*(\d+)")
_JOB_JOINED_MASK = 0xFF  # reg_job's low byte (JOB_JOINED in p4/include/state.p4)


def _handle(out: str) -> int:
    m = _HANDLE.search(out)
    if m is None:
        raise Bmv2Error(f"no handle in the runtime's answer: {out.strip()}")
    return int(m[1])


class Bmv2Agent(pb_grpc.SwitchAgentServicer):
    """The SwitchAgent for a running :class:`Bmv2Process` with netagg's program.

    Args:
        switch: the running simple_switch.
        switch_ip, switch_mac: the aggregator's own addresses (workers send to switch_ip:47000; the
            program answers ARP for it).
        hosts: the hosts behind its ports (for L2 forwarding and for replicating results to workers).
        config: p4/include/config.p4 as compiled (sizes, counter indices).
    """

    def __init__(
        self,
        switch: Bmv2Process,
        switch_ip: str,
        switch_mac: str,
        hosts: Sequence[HostPort],
        *,
        config: Path | None = None,
    ) -> None:
        self.switch = switch
        self.constants = p4_constants(config)
        self.slots = self.constants["NETAGG_SLOTS"]
        self.elements = self.constants["NETAGG_ELEMENTS"]
        self.max_jobs = self.constants["NETAGG_MAX_JOBS"]
        self.drop_names = _counter_names("DROP_", self.constants)
        self.event_names = _counter_names("EV_", self.constants)
        self.hosts = {h.ip: h for h in hosts}
        self._jobs: dict[int, _Job] = {}
        self._lock = threading.Lock()
        self._names = _short_names(switch.json_path)
        ports = sorted({h.port for h in hosts})
        commands = []
        if "switch_addr" in self._names:  # the forwarding-only program has no aggregator address
            table, action = self._n("switch_addr"), self._n("set_switch_addr")
            commands.append(f"table_set_default {table} {action} {switch_mac} {switch_ip}")
        commands += [f"table_add {self._n('l2')} {self._n('to_port')} {h.mac} => {h.port}" for h in hosts]
        commands += [
            f"mc_mgrp_create {self.constants['FLOOD_GROUP']}",
            f"mc_node_create 0 {' '.join(map(str, ports))}",
        ]
        outs = switch.cli(commands)
        node = _handle(outs[-1])
        switch.cli([f"mc_node_associate {self.constants['FLOOD_GROUP']} {node}"])

    # -- helpers -------------------------------------------------------------------------------
    def _n(self, short: str) -> str:
        """The full name of a table or action of the program."""
        return self._names[short]

    def _register_read(self, register: str, index: int) -> int:
        out = self.switch.cli([f"register_read {register} {index}"])[0]
        m = _REGISTER.search(out)
        if m is None:
            raise Bmv2Error(f"unexpected register answer: {out.strip()}")
        return int(m[1])

    def _run(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        with self._lock:
            try:
                return fn()
            except ValueError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except KeyError as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]) if exc.args else "not found")
            except Bmv2Error as exc:
                context.abort(grpc.StatusCode.INTERNAL, f"BMv2 runtime: {exc}")
        raise AssertionError("unreachable")

    def _group(self, job: _Job) -> int:
        return self.constants["JOB_GROUP_BASE"] + job.index

    def _clear_workers(self, job: _Job) -> None:
        cmds = [f"table_delete {self._n('workers')} {h}" for h in job.workers]
        cmds += [f"table_delete {self._n('replicas')} {h}" for h in job.replicas]
        for node in job.nodes:
            cmds += [f"mc_node_dissociate {self._group(job)} {node}", f"mc_node_destroy {node}"]
        if cmds:
            self.switch.cli(cmds)
        job.workers, job.replicas, job.nodes = [], [], []

    def _set_workers(self, job: _Job, addresses: Sequence[tuple[str, int]]) -> None:
        if len(addresses) != job.cfg.workers:
            raise ValueError(f"{len(addresses)} addresses for {job.cfg.workers} workers")
        hosts = []
        for ip, port in addresses:
            host = self.hosts.get(ip)
            if host is None:
                raise ValueError(
                    f"no host with IP {ip} is attached to this switch (known: {sorted(self.hosts)})"
                )
            hosts.append((host, port))
        self._clear_workers(job)
        # A new set of addresses begins a new JOIN round (docs/protocol.md, "Joining"): joined := 0,
        # the epoch and its tag kept (reg_job packs epoch, tag and joined; p4/include/state.p4).
        state = self._register_read("reg_job", job.index)
        cmds = [
            f"register_write reg_job {job.index} {state & ~_JOB_JOINED_MASK}",
            f"register_write reg_members {job.index} 0",
        ]
        group = self._group(job)
        for w, (host, port) in enumerate(hosts):
            cmds.append(
                f"table_add {self._n('workers')} {self._n('set_worker')} {job.index} {w} => {host.ip} {port}"
            )
            cmds.append(
                f"table_add {self._n('replicas')} {self._n('to_worker')} {group} {w + 1} => "
                f"{host.mac} {host.ip} {port}"
            )
            cmds.append(f"mc_node_create {w + 1} {host.port}")
        outs = self.switch.cli(cmds)
        for w in range(len(hosts)):
            job.workers.append(_handle(outs[2 + 3 * w]))
            job.replicas.append(_handle(outs[3 + 3 * w]))
            job.nodes.append(_handle(outs[4 + 3 * w]))
        self.switch.cli([f"mc_node_associate {group} {n}" for n in job.nodes])

    def _install(self, cfg: JobConfig) -> None:
        if cfg.job_id in self._jobs:
            raise KeyError  # handled by the caller as ALREADY_EXISTS
        if cfg.elements > self.elements:
            raise ValueError(
                f"elements_per_packet must be 1-{self.elements} on this P4 program, got {cfg.elements}"
            )
        if cfg.slot_base + cfg.slots > self.slots:
            raise ValueError(
                f"slots [{cfg.slot_base}, {cfg.slot_base + cfg.slots}) lie outside this switch's "
                f"{self.slots} slots"
            )
        if cfg.multicast is not None:
            raise ValueError("multicast_group must be empty: the P4 switch replicates results itself")
        parent_host = None
        if cfg.parent is not None:
            parent_host = self.hosts.get(cfg.parent[0])
            if parent_host is None:
                raise ValueError(
                    f"parent_address: no host or switch with IP {cfg.parent[0]} is attached here"
                )
        check_disjoint(cfg, [j.cfg for j in self._jobs.values()])
        used = {j.index for j in self._jobs.values()}
        index = next((i for i in range(self.max_jobs) if i not in used), None)
        if index is None:
            raise ValueError(f"this switch holds at most {self.max_jobs} jobs")
        total = cfg.total_workers if cfg.total_workers is not None else cfg.workers
        full = (1 << cfg.workers) - 1
        group = self.constants["JOB_GROUP_BASE"] + index
        has_parent = int(cfg.parent is not None and parent_host is not None)
        outs = self.switch.cli(
            [
                f"register_write reg_job {index} 0",
                f"register_write reg_members {index} 0",
                f"register_write reg_parent_joined {index} 0",
                f"table_add {self._n('jobs')} {self._n('set_job')} {cfg.job_id} => {index} {cfg.slot_base} "
                f"{cfg.slots} {cfg.workers} {full} {total} {cfg.elements} {has_parent}",
                f"mc_mgrp_create {group}",
            ]
        )
        job = _Job(cfg, index, _handle(outs[3]))
        self._jobs[cfg.job_id] = job
        if cfg.parent is not None and parent_host is not None:
            ip, udp_port = cfg.parent
            outs = self.switch.cli(
                [
                    f"table_add {self._n('parents')} {self._n('set_parent')} {index} => "
                    f"{parent_host.mac} {ip} {udp_port} {parent_host.port} {cfg.parent_worker}",
                    f"table_add {self._n('parent_replicas')} {self._n('to_parent')} {group} => "
                    f"{parent_host.mac} {ip} {udp_port} {cfg.parent_worker}",
                    f"mc_node_create {self.constants['PARENT_RID']} {parent_host.port}",
                ]
            )
            job.parent_entries = [
                (self._n("parents"), _handle(outs[0])),
                (self._n("parent_replicas"), _handle(outs[1])),
            ]
            job.parent_node = _handle(outs[2])
            self.switch.cli([f"mc_node_associate {group} {job.parent_node}"])
        if cfg.addresses is not None:
            self._set_workers(job, cfg.addresses)

    def _remove(self, job_id: int) -> None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            raise KeyError(f"job {job_id} is not installed")
        self._clear_workers(job)
        cmds = [f"table_delete {table} {handle}" for table, handle in job.parent_entries]
        if job.parent_node is not None:
            cmds += [
                f"mc_node_dissociate {self._group(job)} {job.parent_node}",
                f"mc_node_destroy {job.parent_node}",
            ]
        cmds += [f"table_delete {self._n('jobs')} {job.job_handle}", f"mc_mgrp_destroy {self._group(job)}"]
        self.switch.cli(cmds)

    def _counters(self, reset: bool) -> pb.Counters:
        reads = [f"counter_read drops {i}" for i in sorted(self.drop_names)]
        reads += [f"counter_read events {i}" for i in sorted(self.event_names)]
        outs = self.switch.cli(reads)
        values = []
        for out in outs:
            m = _COUNTER.search(out)
            if m is None:
                raise Bmv2Error(f"unexpected counter answer: {out.strip()}")
            values.append((int(m[2]), int(m[1])))  # (packets, bytes)
        nd = len(self.drop_names)
        drops = {self.drop_names[i]: values[k][0] for k, i in enumerate(sorted(self.drop_names))}
        events: dict[str, int] = {}
        for k, i in enumerate(sorted(self.event_names)):
            name = self.event_names[i]
            events[name] = values[nd + k][0]
            if name in ("packets_in", "packets_out"):  # frame bytes (Ethernet + IPv4 + UDP + netagg)
                events["bytes_" + name.split("_")[1]] = values[nd + k][1]
        if reset:
            self.switch.cli(["counter_reset drops", "counter_reset events"])
        return pb.Counters(counters=events, drops=drops)

    # -- RPCs ----------------------------------------------------------------------------------
    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.SwitchInfo:
        return pb.SwitchInfo(
            kind="bmv2",
            total_slots=self.slots,
            min_elements_per_packet=1,
            max_elements_per_packet=self.elements,
            max_workers=MAX_WORKERS,
            version=__version__,
        )

    def InstallJob(
        self, request: pb.InstallJobRequest, context: grpc.ServicerContext
    ) -> pb.InstallJobResponse:
        r = request
        try:
            cfg = job_config(r)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with self._lock:
            if cfg.job_id in self._jobs:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"job {cfg.job_id} is already installed")
        self._run(context, lambda: self._install(cfg))
        return pb.InstallJobResponse()

    def RemoveJob(self, request: pb.RemoveJobRequest, context: grpc.ServicerContext) -> pb.RemoveJobResponse:
        self._run(context, lambda: self._remove(request.wire_job_id))
        return pb.RemoveJobResponse()

    def SetWorkers(
        self, request: pb.SetWorkersRequest, context: grpc.ServicerContext
    ) -> pb.SetWorkersResponse:
        try:
            addresses = [send_address(a, "worker_addresses[]") for a in request.worker_addresses]
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        def run() -> None:
            job = self._jobs.get(request.wire_job_id)
            if job is None:
                raise KeyError(f"job {request.wire_job_id} is not installed")
            if job.cfg.addresses == tuple(addresses):
                return  # already so: keep the round
            self._set_workers(job, addresses)
            job.cfg = dataclasses.replace(job.cfg, addresses=tuple(addresses))

        self._run(context, run)
        return pb.SetWorkersResponse()

    def GetCounters(self, request: pb.GetCountersRequest, context: grpc.ServicerContext) -> pb.Counters:
        return self._run(context, lambda: self._counters(reset=False))

    def ResetCounters(self, request: pb.ResetCountersRequest, context: grpc.ServicerContext) -> pb.Counters:
        return self._run(context, lambda: self._counters(reset=True))


def compile_p4(source: Path, out_dir: Path, *, elements: int | None = None) -> Path:
    """Compile a P4 program with p4c-bm2-ss into ``out_dir`` (JSON and P4Info) unless the JSON there is
    newer than every source under p4/ (as `make p4` would); returns the JSON path."""
    json_path = out_dir / (source.stem + ".json")
    sources = [*P4_DIR.rglob("*.p4"), source]
    fresh = json_path.exists() and json_path.stat().st_mtime > max(s.stat().st_mtime for s in sources)
    if elements is None and fresh:
        return json_path
    p4c = find_binary("p4c-bm2-ss")
    if p4c is None:
        raise Bmv2Error(f"p4c-bm2-ss is needed (on PATH or in ${PREFIX_ENV}/bin)")
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        p4c,
        "--std",
        "p4-16",
        "-o",
        str(json_path),
        "--p4runtime-files",
        str(out_dir / (source.stem + ".p4info.txt")),
    ]
    if elements is not None:
        cmd += [f"-DNETAGG_ELEMENTS={elements}"]
    r = subprocess.run([*cmd, str(source)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise Bmv2Error(f"p4c-bm2-ss failed on {source}:\n{r.stderr.strip()}")
    return json_path
