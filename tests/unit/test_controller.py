"""Placement without gRPC: spec checks, capacity, packet size, window, free ranges, trees, the default
slot policies, and the status code each refusal carries. No server, no socket: the switches are records.

The RPCs themselves (in process, on port 0) are tested in tests/integration/test_controller_service.py.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller import MAX_JOB_WORKERS, ControlError, Placement, SwitchRecord, place, placement_slots
from controller.placement import free_gaps, free_wire_id, job_shape, leaf_of_rank, validate_spec
from controller.service import answering
from netagg.protocol import MAX_ELEMENTS, MAX_SLOTS, MAX_WINDOW_ELEMENTS, MAX_WORKERS, static_job_slots
from netagg.v1 import control_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def spec(**kw) -> pb.JobSpec:
    base = dict(name="job", workers=4, element_type=pb.ELEMENT_TYPE_FLOAT32, elements_per_packet=64, slots=16)
    return pb.JobSpec(**{**base, **kw})


def switch(
    switch_id: str,
    total_slots: int = 40,
    *,
    parent: str = "",
    kind: str = "python",
    max_elements: int = MAX_ELEMENTS,
    max_workers: int = MAX_WORKERS,
) -> SwitchRecord:
    """A registered switch as the store returns it (what a Python switch's agent reports, by default)."""
    info = pb.SwitchInfo(
        kind=kind,
        total_slots=total_slots,
        min_elements_per_packet=1,
        max_elements_per_packet=max_elements,
        max_workers=max_workers,
    )
    return SwitchRecord(switch_id, f"{switch_id}:47000", f"{switch_id}:50051", info, "token", parent)


def refusal(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ControlError) as err:
        call()
    return err.value.code, str(err.value)


def test_the_error_carries_its_status_code_and_message() -> None:
    err = ControlError(EXHAUSTED, "why")
    assert (err.code, str(err)) == (EXHAUSTED, "why") and isinstance(err, Exception)


# -- the default slot policies -------------------------------------------------------------------------
def test_placement_slots_is_a_1_mib_window_of_16_to_1024_packets() -> None:
    assert [placement_slots(n) for n in (1, 64, 256, 512, 1024, 2048, 16384, MAX_ELEMENTS)] == [
        1024,
        1024,
        1024,
        512,
        256,
        128,
        16,
        16,
    ]
    for n in range(1, MAX_ELEMENTS + 1):
        slots = placement_slots(n)
        assert slots == max(16, min(1024, 262144 // n))
        assert slots * n <= MAX_WINDOW_ELEMENTS


def test_static_job_slots_is_16_for_large_packets_and_1024_for_small() -> None:
    assert [static_job_slots(n) for n in (1, 64, 1023, 1024, 2000, MAX_ELEMENTS)] == [
        1024,
        1024,
        1024,
        16,
        16,
        16,
    ]


def test_the_two_policies_are_the_documented_ones_and_differ_in_between() -> None:
    """control.proto documents the controller's default; docs/protocol.md the static switch's. They agree
    at the ends and differ in between (1024 elements: 256 slots from the controller, 16 on a static
    switch), so they are two functions with two names."""
    proto = (ROOT / "proto/netagg/v1/control.proto").read_text()
    assert "(max(16, min(1024, 262144 / elements_per_packet)))" in proto
    sizing = " ".join((ROOT / "docs/protocol.md").read_text().split())
    assert "16 slots for packets of ≥ 1,024 elements" in sizing and "1,024 for smaller ones" in sizing
    assert placement_slots(64) == static_job_slots(64) == 1024
    assert placement_slots(MAX_ELEMENTS) == static_job_slots(MAX_ELEMENTS) == 16
    assert (placement_slots(1024), static_job_slots(1024)) == (256, 16)
    differ = [n for n in range(1, MAX_ELEMENTS + 1) if placement_slots(n) != static_job_slots(n)]
    assert differ == list(range(257, 15421))  # as placement_slots' docstring says


# -- spec checks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (spec(name=""), "spec.name is missing"),
        (spec(name="bad name!"), "spec.name 'bad name!' must be 1-64 characters"),
        (spec(name="x" * 65), "spec.name"),
        (spec(workers=0), "spec.workers must be 1-1024, got 0"),
        (spec(workers=MAX_JOB_WORKERS + 1), "spec.workers must be 1-1024, got 1025"),
        (spec(element_type=pb.ELEMENT_TYPE_UNSPECIFIED), "element_type"),
        (spec(element_type=7), "element_type"),
        (spec(elements_per_packet=MAX_ELEMENTS + 1), "spec.elements_per_packet must be 1-16370"),
        (spec(slots=MAX_SLOTS + 1), "spec.slots must be 1-32768"),
        (spec(slots=4096, elements_per_packet=16370), "exceeds 16777216 (a 64 MiB window)"),
    ],
)
def test_bad_specs_are_invalid_arguments(bad: pb.JobSpec, words: str) -> None:
    code, message = refusal(lambda: validate_spec(bad))
    assert code == INVALID and words in message, message
    code, message = refusal(lambda: place(bad, [switch("sw1")], {}))  # place checks first
    assert code == INVALID and words in message, message


def test_good_specs_pass() -> None:
    validate_spec(spec())
    validate_spec(spec(elements_per_packet=0, slots=0, workers=MAX_JOB_WORKERS))
    validate_spec(spec(slots=2048, elements_per_packet=8192))  # exactly the 64 MiB window


# -- one switch ----------------------------------------------------------------------------------------
def test_defaults_are_filled_in() -> None:
    got = place(spec(elements_per_packet=0, slots=0, workers=2), [switch("sw1")], {})
    assert isinstance(got, Placement)
    assert (got.spec.elements_per_packet, got.spec.slots, got.slot_base) == (16370, 16, 0)
    assert [(sw.switch_id, parent) for sw, parent in got.switches] == [("sw1", "")]
    assert got.spec.name == "job" and got.spec.workers == 2
    got = place(spec(elements_per_packet=1024, slots=0), [switch("sw1", 1024)], {})
    assert got.spec.slots == placement_slots(1024) == 256


def test_the_request_spec_is_not_changed() -> None:
    asked = spec(elements_per_packet=0, slots=0)
    place(asked, [switch("sw1")], {})
    assert (asked.elements_per_packet, asked.slots) == (0, 0)


def test_first_fit_within_a_switch_reuses_freed_ranges() -> None:
    sw = [switch("sw1")]
    assert place(spec(slots=16), sw, {"sw1": [(0, 16)]}).slot_base == 16
    assert place(spec(slots=16), sw, {"sw1": [(16, 32)]}).slot_base == 0  # a freed range first
    code, _ = refusal(lambda: place(spec(slots=4), sw, {"sw1": [(0, 10), (12, 40)]}))  # 2 free, at 10
    assert code == EXHAUSTED
    assert place(spec(slots=2), sw, {"sw1": [(0, 10), (12, 40)]}).slot_base == 10  # the gap fits exactly


def test_the_switch_with_most_free_slots_wins_ties_go_to_the_first() -> None:
    switches = [switch("a", 40), switch("b", 64), switch("c", 64)]
    assert place(spec(), switches, {}).switches[0][0].switch_id == "b"
    used = {"b": [(0, 30)]}
    assert place(spec(), switches, used).switches[0][0].switch_id == "c"
    assert place(spec(), [switch("a"), switch("b")], {}).switches[0][0].switch_id == "a"


def test_no_switch_is_a_failed_precondition() -> None:
    code, message = refusal(lambda: place(spec(), [], {}))
    assert code == PRECONDITION and "no switch is registered" in message


def test_too_many_workers_for_every_switch() -> None:
    code, message = refusal(lambda: place(spec(workers=64), [switch("sw1")], {}))
    assert code == PRECONDITION and "sw1 takes at most 32 workers" in message


def test_packet_size_picks_a_switch_that_takes_it() -> None:
    small = switch("p4", 1024, kind="bmv2", max_elements=64)
    code, message = refusal(lambda: place(spec(elements_per_packet=1024), [small], {}))
    assert code == PRECONDITION and "p4 takes 1-64 elements per packet" in message
    got = place(spec(elements_per_packet=1024), [small, switch("py", 32)], {})
    assert got.switches[0][0].switch_id == "py"
    got = place(spec(elements_per_packet=0, slots=0), [small], {})  # the switch's largest
    assert (got.spec.elements_per_packet, got.spec.slots) == (64, 1024)


def test_a_window_past_64_mib_with_the_switch_default_packet() -> None:
    big = spec(elements_per_packet=0, slots=2048)  # 2048 x 16370 > 2**24
    code, message = refusal(lambda: place(big, [switch("sw1", 4096)], {}))
    assert code == PRECONDITION and "sw1: 2048 slots of 16370 elements exceed the 64 MiB window" in message


def test_no_room_now_is_resource_exhausted_with_what_is_free() -> None:
    code, message = refusal(lambda: place(spec(name="c", slots=16), [switch("sw1")], {"sw1": [(0, 32)]}))
    assert code == EXHAUSTED
    assert "no switch can take a job of 4 workers and 16 slots now" in message
    assert "sw1 has 8 free (largest free range 8)" in message
    code, message = refusal(lambda: place(spec(slots=41), [switch("sw1")], {}))
    assert code == EXHAUSTED and "has 40 free" in message
    # fragmented: 20 free in all, but no 16 in a row
    code, message = refusal(lambda: place(spec(slots=16), [switch("sw1")], {"sw1": [(10, 20), (30, 40)]}))
    assert code == EXHAUSTED and "sw1 has 20 free (largest free range 10)" in message
    code, message = refusal(lambda: place(spec(slots=0, elements_per_packet=64), [switch("sw1")], {}))
    assert code == EXHAUSTED and "its default slots" in message


def test_a_capable_switch_makes_it_exhausted_an_incapable_one_only_reports() -> None:
    switches = [switch("few", max_workers=2), switch("full", 16)]
    code, message = refusal(lambda: place(spec(), switches, {"full": [(0, 16)]}))
    assert code == EXHAUSTED
    assert message.endswith("few takes at most 2 workers; full has 0 free (largest free range 0)")


@given(
    total=st.integers(1, 200),
    used=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 40)), max_size=8),
    slots=st.integers(1, 64),
)
def test_a_placement_is_a_free_range_and_the_first_that_fits(
    total: int, used: list[tuple[int, int]], slots: int
) -> None:
    ranges = [(lo, lo + n) for lo, n in used]
    taken = {s for lo, hi in ranges for s in range(lo, hi)}
    fits = [b for b in range(total - slots + 1) if not taken & set(range(b, b + slots))]
    try:
        got = place(spec(slots=slots), [switch("sw1", total)], {"sw1": ranges})
    except ControlError as exc:
        assert exc.code == EXHAUSTED and fits == []
        return
    assert got.slot_base == fits[0]


# -- free ranges, wire ids ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("used", "total", "gaps"),
    [
        ([], 10, [(0, 10)]),
        ([(0, 10)], 10, []),
        ([(4, 8), (0, 2)], 10, [(2, 4), (8, 10)]),  # any order
        ([(2, 6), (4, 8)], 10, [(0, 2), (8, 10)]),  # overlapping
        ([(2, 4), (2, 4)], 6, [(0, 2), (4, 6)]),  # the same range twice
        ([(8, 20)], 10, [(0, 8)]),  # past the end (a switch that came back smaller)
        ([(12, 20)], 10, [(0, 10)]),
        ([], 0, []),
    ],
)
def test_free_gaps(used, total, gaps) -> None:
    assert free_gaps(used, total) == gaps


def test_free_wire_id_is_the_lowest_free_and_runs_out() -> None:
    assert free_wire_id(set()) == 1
    assert free_wire_id({1, 2, 4}) == 3
    code, message = refusal(lambda: free_wire_id(set(range(1, 0x10000))))
    assert code == EXHAUSTED and "all 65535 wire job ids are in use" in message


# -- trees ---------------------------------------------------------------------------------------------
FABRIC = [switch("spine", 64), switch("leaf1", 64, parent="spine"), switch("leaf2", 64, parent="spine")]


def test_tree_placement_root_first_same_range_everywhere() -> None:
    got = place(spec(workers=4, slots=8, workers_at={"leaf1": 1, "leaf2": 3}), FABRIC, {})
    assert got.switches[0][0].switch_id == "spine" and got.switches[0][1] == ""
    assert {(sw.switch_id, parent) for sw, parent in got.switches} == {
        ("spine", ""),
        ("leaf1", "spine"),
        ("leaf2", "spine"),
    }
    assert (got.slot_base, got.spec.slots, got.spec.elements_per_packet) == (0, 8, 64)
    # the range is free on every switch of the tree at once
    used = {"spine": [(0, 8)], "leaf2": [(8, 12)]}
    got = place(spec(workers=4, slots=8, workers_at={"leaf1": 1, "leaf2": 3}), FABRIC, used)
    assert got.slot_base == 12


def test_tree_of_one_leaf_and_defaults_from_the_smallest_switch() -> None:
    fabric = [switch("spine", 256), switch("leaf1", 256, parent="spine", max_elements=2000)]
    got = place(spec(workers=2, slots=0, elements_per_packet=0, workers_at={"leaf1": 2}), fabric, {})
    assert [(sw.switch_id, parent) for sw, parent in got.switches] == [("leaf1", "")]  # its own root
    assert (got.spec.elements_per_packet, got.spec.slots) == (2000, placement_slots(2000))
    got = place(spec(workers=3, workers_at={"leaf1": 2, "spine": 1}), fabric, {})
    assert [(sw.switch_id, parent) for sw, parent in got.switches] == [("spine", ""), ("leaf1", "spine")]


@pytest.mark.parametrize(
    ("fabric", "workers_at", "code", "words"),
    [
        (FABRIC, {"leaf1": 1, "nowhere": 3}, PRECONDITION, "switch 'nowhere' is not registered"),
        (FABRIC, {"leaf1": 4, "leaf2": 0}, INVALID, "spec.workers_at['leaf2'] must be at least 1, got 0"),
        (FABRIC, {"leaf1": 1, "leaf2": 2}, INVALID, "spec.workers_at adds up to 3, not spec.workers = 4"),
        (
            [switch("a", parent="b"), switch("b", parent="a")],
            {"a": 4},
            PRECONDITION,
            "switch b's parent 'a' is not registered (or the parents loop)",
        ),
        ([switch("a", parent="gone")], {"a": 4}, PRECONDITION, "switch a's parent 'gone' is not registered"),
        ([switch("a"), switch("b")], {"a": 2, "b": 2}, PRECONDITION, "have no common ancestor"),
        (
            [switch("spine", max_workers=1), *FABRIC[1:]],
            {"leaf1": 1, "leaf2": 3},
            PRECONDITION,
            "switch spine would have 2 children; it takes at most 1",
        ),
        (
            [switch("spine"), FABRIC[1], switch("leaf2", parent="spine", max_elements=32)],
            {"leaf1": 1, "leaf2": 3},
            PRECONDITION,
            "switch leaf2 takes 1-32 elements per packet, not 64",
        ),
        (
            [switch("spine"), switch("leaf1", parent="spine", kind="bmv2"), FABRIC[2]],
            {"leaf1": 1, "leaf2": 3},
            PRECONDITION,
            "switch leaf1 (bmv2) cannot forward to a parent",
        ),
        (
            [switch("spine", 64), switch("leaf1", 4, parent="spine"), FABRIC[2]],
            {"leaf1": 1, "leaf2": 3},
            EXHAUSTED,
            "no range of 8 slots is free on all of ['leaf1', 'leaf2', 'spine'] at once",
        ),
    ],
)
def test_tree_refusals(fabric, workers_at, code, words) -> None:
    got, message = refusal(lambda: place(spec(workers=4, slots=8, workers_at=workers_at), fabric, {}))
    assert got == code and words in message, message


def test_tree_window_past_64_mib_is_refused_like_a_single_switch_one() -> None:
    big = spec(workers=4, slots=2048, elements_per_packet=0, workers_at={"leaf1": 1, "leaf2": 3})
    code, message = refusal(lambda: place(big, FABRIC, {}))
    assert code == PRECONDITION and "2048 slots of 16370 elements exceed the 64 MiB window" in message


def test_tree_exhausted_by_jobs_on_another_switch_of_the_tree() -> None:
    used = {"spine": [(0, 60)]}
    code, message = refusal(
        lambda: place(spec(workers=4, slots=8, workers_at={"leaf1": 1, "leaf2": 3}), FABRIC, used)
    )
    assert code == EXHAUSTED and "no range of 8 slots" in message


# -- a job's tree --------------------------------------------------------------------------------------
def _job(workers_at: dict[str, int], placements: list[tuple[str, str]]) -> pb.Job:
    job = pb.Job(spec=spec(workers=sum(workers_at.values()) or 4, workers_at=workers_at))
    for sw, parent in placements:
        job.placements.add(switch_id=sw, slot_base=0, slots=16, parent_switch_id=parent)
    return job


def test_shape_of_a_single_switch_job() -> None:
    shape = job_shape(_job({}, [("sw1", "")]))
    assert set(shape) == {"sw1"}
    node = shape["sw1"]
    assert (node.workers, node.hosts, node.parent, node.parent_worker, node.first_rank) == (4, 4, "", 0, 0)
    assert [leaf_of_rank(shape, r) for r in range(4)] == ["sw1"] * 4


def test_shape_of_a_tree_ranks_by_leaf_name_hosts_before_child_switches() -> None:
    job = _job(
        {"leaf2": 3, "leaf1": 1, "spine": 2},
        [("spine", ""), ("leaf1", "spine"), ("leaf2", "spine")],
    )
    shape = job_shape(job)
    summary = {sw: (n.workers, n.hosts, n.parent, n.parent_worker, n.first_rank) for sw, n in shape.items()}
    assert summary == {
        "spine": (4, 2, "", 0, 4),  # its 2 hosts, then leaf1, leaf2
        "leaf1": (1, 1, "spine", 2, 0),
        "leaf2": (3, 3, "spine", 3, 1),
    }
    assert [leaf_of_rank(shape, r) for r in range(6)] == [
        "leaf1",
        "leaf2",
        "leaf2",
        "leaf2",
        "spine",
        "spine",
    ]


# -- the servicer's one place that aborts --------------------------------------------------------------
class _Context:
    """What `answering` uses of a grpc.ServicerContext: abort (which, in gRPC, raises)."""

    def __init__(self) -> None:
        self.aborted: list[tuple[grpc.StatusCode, str]] = []

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted.append((code, details))
        raise RuntimeError("aborted")


def test_answering_aborts_with_the_errors_code_and_message() -> None:
    context = _Context()
    with pytest.raises(RuntimeError, match="aborted"), answering(context):
        place(spec(slots=41), [switch("sw1")], {})
    [(code, message)] = context.aborted
    assert code == EXHAUSTED and "sw1 has 40 free" in message
    with pytest.raises(KeyError), answering(context):
        raise KeyError("not a refusal: a bug, left to gRPC")
    with answering(context):
        pass
    assert len(context.aborted) == 1
