"""Where a job goes: spec checks, the default window, single-switch and tree placement, a job's tree.

Pure: no gRPC calls, no store, no clock. The servicer reads the registered switches and the slot ranges
in use from the store, calls :func:`place`, and answers the :class:`~controller.errors.ControlError` it
may raise with that error's status code.

Placement on one switch: among the switches that take the job's workers and packet size, the one with
the most free slots, first fit within it (jobs spread over switches). Placement as a tree (the spec
names ``workers_at``): the leaves' common ancestor is the root, every switch on the way forwards to its
parent, and the job gets the same slot range on all of them.

Example::

    placement = place(spec, store.switches(), {s.switch_id: store.used_ranges(s.switch_id) for s in ...})
    placement.spec.slots, placement.slot_base, [sw.switch_id for sw, _ in placement.switches]
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from grpc import StatusCode

from controller.errors import ControlError
from controller.store import SwitchRecord
from netagg.protocol import MAX_ELEMENTS, MAX_SLOTS, MAX_WINDOW_ELEMENTS
from netagg.v1 import control_pb2 as pb

__all__ = [
    "MAX_JOB_WORKERS",
    "Placement",
    "TreeNode",
    "free_gaps",
    "free_wire_id",
    "job_shape",
    "leaf_of_rank",
    "place",
    "placement_slots",
    "validate_spec",
]

MAX_JOB_WORKERS = 1024
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
Ranges = Sequence[tuple[int, int]]


def placement_slots(elements: int) -> int:
    """Slots the controller gives a job whose spec asks for none (``JobSpec.slots == 0``).

    A window of about 1 MiB of int32 per worker, 16 to 1024 packets: ``max(16, min(1024, 262144 //
    elements))``, as proto/netagg/v1/control.proto documents, and never past the 64 MiB window. This is
    not the Python switch's default for a static job (:func:`netagg.protocol.static_job_slots`, 16 or
    1024 by packet size, as measured for ``netagg switch --workers``): from 257 to 15420 elements per
    packet the two differ (1024 elements: 256 slots here, 16 there), and each is documented as it is.

    Example::

        >>> placement_slots(64), placement_slots(1024), placement_slots(16370)
        (1024, 256, 16)
    """
    return min(max(16, min(1024, (1 << 18) // elements)), MAX_WINDOW_ELEMENTS // elements)


def _fits_window(slots: int, elements: int) -> bool:
    """Whether ``slots`` packets of ``elements`` stay within one job's 64 MiB window."""
    return slots * elements <= MAX_WINDOW_ELEMENTS


def _takes_elements(info: pb.SwitchInfo, elements: int) -> bool:
    """Whether a switch takes packets of ``elements`` elements."""
    return info.min_elements_per_packet <= elements <= info.max_elements_per_packet


def _elements_range(info: pb.SwitchInfo) -> str:
    return f"takes {info.min_elements_per_packet}-{info.max_elements_per_packet} elements per packet"


def validate_spec(spec: pb.JobSpec) -> None:
    """Raise :class:`ControlError` (``INVALID_ARGUMENT``) naming the first field of ``spec`` out of range."""
    if not spec.name:
        raise ControlError(
            StatusCode.INVALID_ARGUMENT, "spec.name is missing (1-64 characters of A-Z a-z 0-9 . _ -)"
        )
    if not _NAME.fullmatch(spec.name):
        raise ControlError(
            StatusCode.INVALID_ARGUMENT,
            f"spec.name {spec.name[:80]!r} must be 1-64 characters of A-Z a-z 0-9 . _ -",
        )
    if not 1 <= spec.workers <= MAX_JOB_WORKERS:
        raise ControlError(
            StatusCode.INVALID_ARGUMENT, f"spec.workers must be 1-{MAX_JOB_WORKERS}, got {spec.workers}"
        )
    if spec.element_type not in (pb.ELEMENT_TYPE_INT32, pb.ELEMENT_TYPE_FLOAT32):
        raise ControlError(
            StatusCode.INVALID_ARGUMENT,
            "spec.element_type must be ELEMENT_TYPE_INT32 or ELEMENT_TYPE_FLOAT32",
        )
    if spec.elements_per_packet > MAX_ELEMENTS:
        raise ControlError(
            StatusCode.INVALID_ARGUMENT,
            f"spec.elements_per_packet must be 1-{MAX_ELEMENTS} (what fits a UDP datagram), "
            f"or 0 for the switch's default; got {spec.elements_per_packet}",
        )
    if spec.slots > MAX_SLOTS:
        raise ControlError(
            StatusCode.INVALID_ARGUMENT,
            f"spec.slots must be 1-{MAX_SLOTS}, or 0 for the default; got {spec.slots}",
        )
    if spec.slots and spec.elements_per_packet and not _fits_window(spec.slots, spec.elements_per_packet):
        raise ControlError(
            StatusCode.INVALID_ARGUMENT,
            f"spec.slots x spec.elements_per_packet = {spec.slots * spec.elements_per_packet} exceeds "
            f"{MAX_WINDOW_ELEMENTS} (a 64 MiB window); ask for fewer slots",
        )


@dataclass(frozen=True)
class Placement:
    """Where a job goes: the same slot range on one switch, or on every switch of a tree."""

    spec: pb.JobSpec
    """The job's spec with the defaults filled in (``elements_per_packet``, ``slots``)."""
    slot_base: int
    """The first of the job's ``spec.slots`` slots, on every switch of the placement."""
    switches: tuple[tuple[SwitchRecord, str], ...]
    """(switch, its parent's switch id or "" for the root), the root first."""


def place(
    spec: pb.JobSpec,
    switches: Sequence[SwitchRecord],
    used: Mapping[str, Ranges],
    down: Collection[str] = (),
) -> Placement:
    """Place a job: check ``spec``, then put it on one switch, or on a tree if it names ``workers_at``.

    ``switches`` are the registered switches (in registration order: ties go to the first), ``used``
    maps a switch id to the slot ranges [lo, hi) its jobs hold (a missing id holds none), ``down``
    names the switches that do not answer: they get no job. Raises :class:`ControlError`:
    ``INVALID_ARGUMENT`` for a bad spec, ``FAILED_PRECONDITION`` when no switch could ever take it,
    ``RESOURCE_EXHAUSTED`` when one could but has no room now, ``UNAVAILABLE`` when only switches that
    are down could.
    """
    validate_spec(spec)
    if spec.workers_at:
        return _place_tree(spec, switches, used, down)
    return _place_single(spec, switches, used, down)


def _with_defaults(spec: pb.JobSpec, elements: int, slots: int) -> pb.JobSpec:
    full = pb.JobSpec()
    full.CopyFrom(spec)
    full.elements_per_packet, full.slots = elements, slots
    return full


def _place_single(
    spec: pb.JobSpec, switches: Sequence[SwitchRecord], used: Mapping[str, Ranges], down: Collection[str]
) -> Placement:
    """The switch with the most free slots among those that take the job, first fit within it."""
    if not switches:
        raise ControlError(
            StatusCode.FAILED_PRECONDITION,
            "no switch is registered (start one with `netagg switch --controller HOST:PORT ...`)",
        )
    fits, free_report = [], []
    for sw in switches:
        info = sw.info
        n = spec.elements_per_packet or info.max_elements_per_packet
        if spec.workers > info.max_workers:
            free_report.append(f"{sw.switch_id} takes at most {info.max_workers} workers")
            continue
        if not _takes_elements(info, n):
            free_report.append(f"{sw.switch_id} {_elements_range(info)}")
            continue
        slots = spec.slots or placement_slots(n)
        if not _fits_window(slots, n):
            free_report.append(f"{sw.switch_id}: {slots} slots of {n} elements exceed the 64 MiB window")
            continue
        gaps = free_gaps(used.get(sw.switch_id, ()), info.total_slots)
        free = sum(hi - lo for lo, hi in gaps)
        largest = max((hi - lo for lo, hi in gaps), default=0)
        base = next((lo for lo, hi in gaps if hi - lo >= slots), None)
        if sw.switch_id in down:
            free_report.append(f"{sw.switch_id} is down" + (" (it has room)" if base is not None else ""))
            continue
        free_report.append(f"{sw.switch_id} has {free} free (largest free range {largest})")
        if base is not None:
            fits.append((free, sw, n, slots, base))
    if not fits:
        capable = any(" free " in r for r in free_report)
        if capable:
            code = StatusCode.RESOURCE_EXHAUSTED
        elif any(r.endswith(" is down (it has room)") for r in free_report):
            code = StatusCode.UNAVAILABLE
        else:
            code = StatusCode.FAILED_PRECONDITION
        want = f"{spec.slots} slots" if spec.slots else "its default slots"
        raise ControlError(
            code,
            f"no switch can take a job of {spec.workers} workers and {want} now: " + "; ".join(free_report),
        )
    fits.sort(key=lambda f: -f[0])  # most free slots first (stable: ties keep the switches' order)
    _, sw, n, slots, base = fits[0]
    return Placement(_with_defaults(spec, n, slots), base, ((sw, ""),))


def _place_tree(
    spec: pb.JobSpec, switches: Sequence[SwitchRecord], used: Mapping[str, Ranges], down: Collection[str]
) -> Placement:
    """A job spread over several switches as a tree through their common ancestor."""
    by_id = {s.switch_id: s for s in switches}
    for leaf, n in spec.workers_at.items():
        if leaf not in by_id:
            raise ControlError(
                StatusCode.FAILED_PRECONDITION, f"spec.workers_at: switch {leaf!r} is not registered"
            )
        if n < 1:
            raise ControlError(
                StatusCode.INVALID_ARGUMENT, f"spec.workers_at[{leaf!r}] must be at least 1, got {n}"
            )
    if sum(spec.workers_at.values()) != spec.workers:
        raise ControlError(
            StatusCode.INVALID_ARGUMENT,
            f"spec.workers_at adds up to {sum(spec.workers_at.values())}, not spec.workers = {spec.workers}",
        )
    paths = {}
    for leaf in spec.workers_at:
        path, at = [leaf], by_id[leaf].parent
        while at:
            if at in path or at not in by_id:
                raise ControlError(
                    StatusCode.FAILED_PRECONDITION,
                    f"switch {path[-1]}'s parent {at!r} is not registered (or the parents loop)",
                )
            path.append(at)
            at = by_id[at].parent
        paths[leaf] = path
    first = paths[min(paths)]
    root = next((n for n in first if all(n in p for p in paths.values())), None)
    if root is None:
        raise ControlError(
            StatusCode.FAILED_PRECONDITION,
            f"switches {sorted(paths)} have no common ancestor (see ListSwitches' parent_switch_id)",
        )
    tree: dict[str, str] = {}
    for path in paths.values():
        for node, parent in zip(path, [*path[1:], ""], strict=True):
            tree[node] = "" if node == root else parent
            if node == root:
                break
    if any(sw in down for sw in tree):
        raise ControlError(
            StatusCode.UNAVAILABLE,
            f"switches {sorted(sw for sw in tree if sw in down)} of the tree are down (see ListSwitches)",
        )
    n = spec.elements_per_packet or min(by_id[sw].info.max_elements_per_packet for sw in tree)
    slots = spec.slots or placement_slots(n)
    for sw, parent in tree.items():
        info = by_id[sw].info
        children = spec.workers_at.get(sw, 0) + sum(1 for p in tree.values() if p == sw)
        if children > info.max_workers:
            raise ControlError(
                StatusCode.FAILED_PRECONDITION,
                f"switch {sw} would have {children} children; it takes at most {info.max_workers}",
            )
        if not _takes_elements(info, n):
            raise ControlError(
                StatusCode.FAILED_PRECONDITION, f"switch {sw} {_elements_range(info)}, not {n}"
            )
        if parent and info.kind != "python":
            raise ControlError(
                StatusCode.FAILED_PRECONDITION,
                f"switch {sw} ({info.kind}) cannot forward to a parent; only Python switches can be "
                "inner nodes of a tree yet",
            )
    if not _fits_window(slots, n):
        raise ControlError(
            StatusCode.FAILED_PRECONDITION,
            f"switches {sorted(tree)}: {slots} slots of {n} elements exceed the 64 MiB window",
        )
    in_use = [r for sw in tree for r in used.get(sw, ())]
    total = min(by_id[sw].info.total_slots for sw in tree)
    base = next((lo for lo, hi in free_gaps(in_use, total) if hi - lo >= slots), None)
    if base is None:
        raise ControlError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"no range of {slots} slots is free on all of {sorted(tree)} at once",
        )
    order = sorted(tree, key=lambda sw: tree[sw] != "")  # the root first
    return Placement(_with_defaults(spec, n, slots), base, tuple((by_id[sw], tree[sw]) for sw in order))


def free_gaps(used: Ranges, total: int) -> list[tuple[int, int]]:
    """The free ranges [lo, hi) of slots 0..total given the ``used`` ranges (in any order, may overlap).

    Example::

        >>> free_gaps([(4, 8), (0, 2)], 10)
        [(2, 4), (8, 10)]
    """
    gaps, at = [], 0
    for lo, hi in sorted(used):
        if lo > at:
            gaps.append((at, min(lo, total)))
        at = max(at, hi)
    if at < total:
        gaps.append((at, total))
    return [(lo, hi) for lo, hi in gaps if hi > lo]


def free_wire_id(used: Collection[int]) -> int:
    """The lowest wire job id (1-65535) not in ``used``; ``RESOURCE_EXHAUSTED`` if none is."""
    wire = next((i for i in range(1, 0x10000) if i not in used), None)
    if wire is None:
        raise ControlError(StatusCode.RESOURCE_EXHAUSTED, "all 65535 wire job ids are in use")
    return wire


@dataclass(frozen=True)
class TreeNode:
    """One switch of a job's placement: what it aggregates and where it sends its partial sums."""

    workers: int
    """Its children: its hosts, then its child switches."""
    hosts: int
    """Workers of the job attached to it."""
    parent: str
    """switch_id of its parent in the tree, "" for the root."""
    parent_worker: int
    """Its worker id at the parent."""
    first_rank: int
    """Ranks [first_rank, first_rank + hosts) are its hosts."""


def job_shape(job: pb.Job) -> dict[str, TreeNode]:
    """The tree of a job from its spec and placements (single switch: one node with every worker).

    Leaves are numbered in switch-id order: the ranks of the first leaf come first. At a parent, its own
    hosts are workers 0.., then its child switches in switch-id order.
    """
    if not job.spec.workers_at:
        p = job.placements[0]
        return {p.switch_id: TreeNode(job.spec.workers, job.spec.workers, "", 0, 0)}
    parents = {p.switch_id: p.parent_switch_id for p in job.placements}
    hosts = dict(job.spec.workers_at)
    kids = {sw: sorted(c for c, par in parents.items() if par == sw) for sw in parents}
    first, rank = {}, 0
    for leaf in sorted(hosts):
        first[leaf] = rank
        rank += hosts[leaf]
    nodes = {}
    for sw, par in parents.items():
        index = hosts.get(par, 0) + kids[par].index(sw) if par else 0
        nodes[sw] = TreeNode(hosts.get(sw, 0) + len(kids[sw]), hosts.get(sw, 0), par, index, first.get(sw, 0))
    return nodes


def leaf_of_rank(shape: Mapping[str, TreeNode], rank: int) -> str:
    """The switch whose hosts include ``rank`` (ranks are checked against the job's workers first)."""
    return next(sw for sw, node in shape.items() if node.first_rank <= rank < node.first_rank + node.hosts)
