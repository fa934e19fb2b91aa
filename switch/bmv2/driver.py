"""The BMv2 table driver: :class:`Bmv2Backend` implements :class:`switch.backend.SwitchBackend` by
programming netagg's P4 program in a running :class:`~switch.bmv2.process.Bmv2Process`.

A job becomes an entry of the ``jobs`` table (and of ``job_keys`` if it has a key), its workers entries
of ``workers`` (source check) and ``replicas`` (egress rewrite), and a multicast group with one node per
worker; a parent adds entries of ``parents`` and ``parent_replicas`` (with the job's key there) and one
more node. Counters are the P4 ``drops`` and ``events``
counters, whose indices are read from p4/include/config.p4.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from switch.backend import (
    AlreadyExists,
    Counters,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SwitchInfo,
    Unavailable,
)
from switch.bmv2.process import Bmv2Error, Bmv2Process, p4_constants
from switch.jobs import Address, JobConfig, check_disjoint

__all__ = ["Bmv2Backend", "HostPort"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def counter_names(prefix: str, constants: Mapping[str, int]) -> dict[int, str]:
    return {v: k[len(prefix) :].lower() for k, v in constants.items() if k.startswith(prefix)}


def short_names(json_path: Path) -> dict[str, str]:
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
    key_handle: int | None = None  # its entry in job_keys (a job with a key)
    parent_entries: list[tuple[str, int]] = field(default_factory=list)  # (table, handle)
    parent_node: int | None = None


_HANDLE = re.compile(r"handle (\d+)")
# simple_switch_CLI answers counter_read with "drops[3]= (96 bytes, 2 packets)"
_COUNTER = re.compile(r"\((\d+) bytes, (\d+) packets\)")
# ... and register_read with "reg_job[0]= 1099511627776"
_REGISTER = re.compile(r"\]=\s*(\d+)")
JOB_JOINED_MASK = 0xFF  # reg_job's low byte (JOB_JOINED in p4/include/state.p4)


def key_words(key: int) -> tuple[int, int]:
    """A 64-bit job key as the two 32-bit words a JOIN carries (high word first) and the P4 tables
    hold."""
    return key >> 32, key & 0xFFFFFFFF


def _handle(out: str) -> int:
    m = _HANDLE.search(out)
    if m is None:
        raise Bmv2Error(f"no handle in the runtime's answer: {out.strip()}")
    return int(m[1])


class Bmv2Backend:
    """:class:`~switch.backend.SwitchBackend` for a running :class:`Bmv2Process` with netagg's program.
    The constructor programs what does not depend on jobs: the aggregator's own addresses, L2
    forwarding to ``hosts`` and the flood group.

    Example::

        switch = Bmv2Process(compile_p4(P4_DIR / "netagg.p4", Path("build/p4")), {1: "veth1", 2: "veth2"})
        backend = Bmv2Backend(switch, "10.0.0.254", "02:00:0a:00:00:fe", hosts)
        backend.install(JobConfig(job_id=1, workers=2, slots=64, elements=64, addresses=...))

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
        self.drop_names = counter_names("DROP_", self.constants)
        self.event_names = counter_names("EV_", self.constants)
        self.hosts = {h.ip: h for h in hosts}
        self._jobs: dict[int, _Job] = {}
        self._lock = threading.Lock()
        self._names = short_names(switch.json_path)
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

    def _run(self, fn: Callable[[], T]) -> T:
        """``fn()`` under the driver's lock; a switch that exited is Unavailable, and a ValueError of
        the configuration (:func:`check_disjoint`, JobConfig) InvalidArgument."""
        with self._lock:
            if not self.switch.alive():
                raise Unavailable(f"simple_switch (pid {self.switch.pid}) has exited")
            try:
                return fn()
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
            except Bmv2Error as exc:
                if not self.switch.alive():
                    raise Unavailable(f"simple_switch (pid {self.switch.pid}) exited: {exc}") from None
                raise

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
            raise InvalidArgument(f"{len(addresses)} addresses for {job.cfg.workers} workers")
        hosts = []
        for ip, port in addresses:
            host = self.hosts.get(ip)
            if host is None:
                raise InvalidArgument(
                    f"no host with IP {ip} is attached to this switch (known: {sorted(self.hosts)})"
                )
            hosts.append((host, port))
        self._clear_workers(job)
        # A new set of addresses begins a new JOIN round (docs/protocol.md, "Joining"): joined := 0,
        # the epoch and its tag kept (reg_job packs epoch, tag and joined; p4/include/state.p4).
        state = self._register_read("reg_job", job.index)
        cmds = [
            f"register_write reg_job {job.index} {state & ~JOB_JOINED_MASK}",
            f"register_write reg_members {job.index} 0",
            f"register_write reg_repeated {job.index} 0",
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
        first = len(cmds) - 3 * len(hosts)  # the register writes come first
        outs = self.switch.cli(cmds)
        for w in range(len(hosts)):
            job.workers.append(_handle(outs[first + 3 * w]))
            job.replicas.append(_handle(outs[first + 1 + 3 * w]))
            job.nodes.append(_handle(outs[first + 2 + 3 * w]))
        self.switch.cli([f"mc_node_associate {group} {n}" for n in job.nodes])

    def _install(self, cfg: JobConfig) -> None:
        if cfg.job_id in self._jobs:
            raise AlreadyExists(f"job {cfg.job_id} is already installed")
        if cfg.elements > self.elements:
            raise InvalidArgument(
                f"elements_per_packet must be 1-{self.elements} on this P4 program, got {cfg.elements}"
            )
        if cfg.slot_base + cfg.slots > self.slots:
            raise InvalidArgument(
                f"slots [{cfg.slot_base}, {cfg.slot_base + cfg.slots}) lie outside this switch's "
                f"{self.slots} slots"
            )
        if cfg.multicast is not None:
            raise InvalidArgument("multicast_group must be empty: the P4 switch replicates results itself")
        parent_host = None
        if cfg.parent is not None:
            parent_host = self.hosts.get(cfg.parent[0])
            if parent_host is None:
                raise InvalidArgument(
                    f"parent_address: no host or switch with IP {cfg.parent[0]} is attached here"
                )
        check_disjoint(cfg, [j.cfg for j in self._jobs.values()])
        used = {j.index for j in self._jobs.values()}
        index = next((i for i in range(self.max_jobs) if i not in used), None)
        if index is None:
            raise ResourceExhausted(f"this switch holds at most {self.max_jobs} jobs")
        total = cfg.total_workers if cfg.total_workers is not None else cfg.workers
        full = (1 << cfg.workers) - 1
        group = self.constants["JOB_GROUP_BASE"] + index
        has_parent = int(cfg.parent is not None and parent_host is not None)
        clear = ("reg_job", "reg_members", "reg_repeated", "reg_parent_joined", "reg_ack", "reg_refuse_tat")
        outs = self.switch.cli(
            [
                *(f"register_write {reg} {index} 0" for reg in clear),
                f"table_add {self._n('jobs')} {self._n('set_job')} {cfg.job_id} => {index} {cfg.slot_base} "
                f"{cfg.slots} {cfg.workers} {full} {total} {cfg.elements} {has_parent}",
                f"mc_mgrp_create {group}",
            ]
        )
        job = _Job(cfg, index, _handle(outs[len(clear)]))
        self._jobs[cfg.job_id] = job
        if cfg.key:
            hi, lo = key_words(cfg.key)
            out = self.switch.cli(
                [f"table_add {self._n('job_keys')} {self._n('set_key')} {index} => {hi} {lo}"]
            )
            job.key_handle = _handle(out[0])
        if cfg.parent is not None and parent_host is not None:
            ip, udp_port = cfg.parent
            key = " ".join(map(str, key_words(cfg.parent_key)))
            outs = self.switch.cli(
                [
                    f"table_add {self._n('parents')} {self._n('set_parent')} {index} => "
                    f"{parent_host.mac} {ip} {udp_port} {parent_host.port} {cfg.parent_worker} {key}",
                    f"table_add {self._n('parent_replicas')} {self._n('to_parent')} {group} => "
                    f"{parent_host.mac} {ip} {udp_port} {cfg.parent_worker} {key}",
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
            raise NotFound(f"job {job_id} is not installed")
        self._clear_workers(job)
        cmds = [f"table_delete {table} {handle}" for table, handle in job.parent_entries]
        if job.key_handle is not None:
            cmds.append(f"table_delete {self._n('job_keys')} {job.key_handle}")
        if job.parent_node is not None:
            cmds += [
                f"mc_node_dissociate {self._group(job)} {job.parent_node}",
                f"mc_node_destroy {job.parent_node}",
            ]
        cmds += [f"table_delete {self._n('jobs')} {job.job_handle}", f"mc_mgrp_destroy {self._group(job)}"]
        self.switch.cli(cmds)

    def _counters(self, reset: bool) -> Counters:
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
        return {"counters": events, "drops": drops}

    # -- SwitchBackend --------------------------------------------------------------------------
    def info(self) -> SwitchInfo:
        return SwitchInfo("bmv2", self.slots, self.elements)

    def install(self, cfg: JobConfig) -> None:
        self._run(lambda: self._install(cfg))

    def remove(self, job_id: int) -> None:
        self._run(lambda: self._remove(job_id))

    def set_workers(self, job_id: int, addresses: Sequence[Address]) -> None:
        pinned = tuple(addresses)

        def run() -> None:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound(f"job {job_id} is not installed")
            if job.cfg.addresses == pinned:
                return  # already so: keep the round
            self._set_workers(job, pinned)
            job.cfg = dataclasses.replace(job.cfg, addresses=pinned)

        self._run(run)

    def counters(self, *, reset: bool = False) -> Counters:
        return self._run(lambda: self._counters(reset))
