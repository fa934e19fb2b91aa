"""The controller's truth-telling parts without gRPC: placement skips switches that are down, the store
keeps job keys and who has left (SQLite, in a file and in memory), InstallJob's key becomes the
JobConfig's key and parent key, per-job counters become JobCounters, `netagg ctl stats` rates, and the
controller's flags. (The same over real gRPC servers: tests/integration/test_controller_health.py.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest

from controller import ControlError, SwitchRecord, place
from controller.service import new_key
from controller.store import Member, Store
from netagg.cli import main as netagg_main
from netagg.cli.ctl import Rates
from netagg.protocol import MAX_ELEMENTS, MAX_WORKERS
from netagg.v1 import control_pb2 as pb
from switch.agent import job_config, job_counters


def spec(**kw) -> pb.JobSpec:
    base = dict(name="job", workers=2, element_type=pb.ELEMENT_TYPE_INT32, elements_per_packet=64, slots=16)
    return pb.JobSpec(**{**base, **kw})


def switch(switch_id: str, total_slots: int = 40, parent: str = "") -> SwitchRecord:
    info = pb.SwitchInfo(
        kind="python",
        total_slots=total_slots,
        min_elements_per_packet=1,
        max_elements_per_packet=MAX_ELEMENTS,
        max_workers=MAX_WORKERS,
    )
    return SwitchRecord(switch_id, f"{switch_id}:47000", f"{switch_id}:50051", info, "token", parent)


def refusal(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ControlError) as err:
        call()
    return err.value.code, str(err.value)


# -- placement and switches that are down ---------------------------------------------------------
def test_a_down_switch_gets_no_job_even_with_the_most_room() -> None:
    placed = place(spec(), [switch("big", 100), switch("small", 20)], {}, down={"big"})
    assert [sw.switch_id for sw, _ in placed.switches] == ["small"]


def test_only_down_switches_with_room_is_unavailable() -> None:
    code, message = refusal(lambda: place(spec(), [switch("a"), switch("b")], {}, down={"a", "b"}))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "a is down (it has room)" in message and "b is down (it has room)" in message


def test_a_full_up_switch_beside_a_down_one_is_exhausted() -> None:
    code, message = refusal(
        lambda: place(spec(slots=16), [switch("a"), switch("b")], {"b": [(0, 40)]}, down={"a"})
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "a is down" in message and "b has 0 free" in message


def test_a_tree_through_a_down_switch_is_unavailable() -> None:
    fabric = [switch("spine"), switch("leaf1", parent="spine"), switch("leaf2", parent="spine")]
    tree = spec(workers=4, workers_at={"leaf1": 2, "leaf2": 2})
    assert len(place(tree, fabric, {}).switches) == 3
    code, message = refusal(lambda: place(tree, fabric, {}, down={"spine"}))
    assert code == grpc.StatusCode.UNAVAILABLE and "['spine']" in message and "down" in message


# -- keys -------------------------------------------------------------------------------------------
def test_keys_are_random_non_zero_64_bit() -> None:
    keys = {new_key() for _ in range(1000)}
    assert len(keys) == 1000 and 0 not in keys and all(0 < k < 1 << 64 for k in keys)
    assert any(k >= 1 << 63 for k in keys)  # the top bit is used (2^-1000 to fail by chance)


def test_install_job_key_is_the_key_and_with_a_parent_the_parent_key() -> None:
    def request(**kw: object) -> pb.InstallJobRequest:
        return pb.InstallJobRequest(wire_job_id=3, workers=2, slots=4, elements_per_packet=64, **kw)  # type: ignore[arg-type]

    root = job_config(request(key=0xFFFF_FFFF_FFFF_FFFF))
    assert (root.key, root.parent_key) == (0xFFFF_FFFF_FFFF_FFFF, 0)
    leaf = job_config(request(key=12345, parent_address="10.0.0.1:47000", parent_worker_id=1))
    assert (leaf.key, leaf.parent_key) == (12345, 12345)
    plain = job_config(request())
    assert (plain.key, plain.parent_key) == (0, 0)


def _job(job_id: str, wire: int, workers: int = 2) -> pb.Job:
    job = pb.Job(job_id=job_id, wire_job_id=wire, spec=spec(workers=workers), owner="alice", create_time=1.0)
    job.placements.add(switch_id="sw1", slot_base=0, slots=16)
    return job


def got(store: Store, job_id: str) -> pb.Job:
    job = store.job(job_id)
    assert job is not None
    return job


def member(store: Store, job_id: str, rank: int) -> Member:
    m = store.member(job_id, rank)
    assert m is not None
    return m


def test_the_store_keeps_keys_across_a_reopen_and_never_in_the_job(tmp_path: Path) -> None:
    db = tmp_path / "ctl.db"
    store = Store(db)
    store.add_job(_job("j-aaaaaa", 1), key=0xDEAD_BEEF_0123_4567)
    store.add_job(_job("j-bbbbbb", 2))
    store.close()
    again = Store(db)
    assert again.job_key("j-aaaaaa") == 0xDEAD_BEEF_0123_4567
    assert again.job_key("j-bbbbbb") == 0 and again.job_key("j-nothere") == 0
    assert (0xDEAD_BEEF_0123_4567).to_bytes(8, "little") not in got(again, "j-aaaaaa").SerializeToString()
    again.close()


def test_a_file_from_before_keys_and_leaves_is_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE, "
        "wire_job_id INTEGER NOT NULL UNIQUE, owner TEXT NOT NULL, spec BLOB NOT NULL, "
        "create_time REAL NOT NULL);"
        "CREATE TABLE members (job_id TEXT NOT NULL, rank INTEGER NOT NULL, address TEXT NOT NULL, "
        "PRIMARY KEY (job_id, rank));"
    )
    old.execute(
        "INSERT INTO jobs (job_id, wire_job_id, owner, spec, create_time) VALUES (?, ?, ?, ?, ?)",
        ("j-cccccc", 5, "alice", spec().SerializeToString(), 1.0),
    )
    old.execute("INSERT INTO members VALUES ('j-cccccc', 0, '10.0.0.1:5000')")
    old.commit()
    old.close()
    store = Store(db)
    assert store.job_key("j-cccccc") == 0  # an old job has no key
    m = member(store, "j-cccccc", 0)
    assert m.address == "10.0.0.1:5000" and not m.left
    assert list(got(store, "j-cccccc").joined_ranks) == [0]
    store.close()


def test_leaving_and_the_states_the_store_gives() -> None:
    store = Store(":memory:")
    store.add_job(_job("j-dddddd", 1))
    assert got(store, "j-dddddd").state == pb.JOB_STATE_PENDING
    store.put_member("j-dddddd", 0, "10.0.0.1:5000")
    store.put_member("j-dddddd", 1, "10.0.0.2:5000")
    assert got(store, "j-dddddd").state == pb.JOB_STATE_RUNNING
    assert store.leave_member("j-dddddd", 0, "10.0.0.9:5000") is False  # not its address
    assert store.leave_member("j-dddddd", 0, "10.0.0.1:5000") is True
    assert store.leave_member("j-dddddd", 0, "10.0.0.1:5000") is False  # left already
    job = got(store, "j-dddddd")
    assert job.state == pb.JOB_STATE_PENDING and list(job.joined_ranks) == [1]
    assert member(store, "j-dddddd", 0).left is True  # its address stays (pinned on the switch)
    store.leave_member("j-dddddd", 1, "10.0.0.2:5000")
    assert got(store, "j-dddddd").state == pb.JOB_STATE_IDLE
    store.put_member("j-dddddd", 1, "10.0.0.3:5000")  # joins again, from elsewhere
    job = got(store, "j-dddddd")
    assert job.state == pb.JOB_STATE_PENDING and list(job.joined_ranks) == [1]
    assert member(store, "j-dddddd", 1).left is False


# -- per-job counters and rates ---------------------------------------------------------------------
def test_job_stats_become_job_counters_in_wire_id_order() -> None:
    stats = {
        9: {
            "packets_in": 3,
            "bytes_in": 72,
            "drops": {"not_joined": 3},
            "joined": 1,
            "epoch": 4,
            "running": True,
        },
        2: {"packets_in": 0, "completions": 0, "drops": {}, "joined": 0, "epoch": 0},
    }
    second, first = job_counters(stats)[1], job_counters(stats)[0]
    assert (first.wire_job_id, second.wire_job_id) == (2, 9)
    assert dict(second.counters) == {"packets_in": 3, "bytes_in": 72}
    assert dict(second.drops) == {"not_joined": 3} and (second.joined, second.epoch) == (1, 4)
    assert second.running and not first.running


def _snap(t: float, packets: int, nbytes: int, completions: int) -> pb.StatsSnapshot:
    snap = pb.StatsSnapshot(time=t)
    snap.job_counters.add(
        job_id="j-eeeeee",
        switch_id="sw1",
        counters={"packets_in": packets, "bytes_in": nbytes, "completions": completions},
        joined=2,
        epoch=1,
    )
    return snap


def test_ctl_stats_rates_are_over_the_last_interval() -> None:
    rates = Rates()
    assert rates.rates(_snap(10.0, 100, 1_000_000, 10)) == [["j-eeeeee", "sw1", "-", "-", "-", 0, 2, 1]]
    assert rates.rates(_snap(12.0, 2100, 9_000_000, 30)) == [
        ["j-eeeeee", "sw1", "1000", "4.00", "10", 0, 2, 1]
    ]
    # counters that went back (the switch restarted): no rate for that interval
    assert rates.rates(_snap(13.0, 5, 100, 1))[0][2:5] == ["-", "-", "-"]
    table = rates.table(_snap(14.0, 505, 100, 1))
    assert "PACKETS/S" in table and "500" in table


# -- flags ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--health-interval", "0"], "--health-interval: 0 is not a number of seconds > 0"),
        (["--health-interval", "soon"], "'soon' is not a number of seconds"),
        (["--health-failures", "0"], "--health-failures: 0 is outside [1, 1000]"),
        (["--idle-after", "-1"], "--idle-after: -1 is not a number of seconds > 0"),
        (["--metrics", "nowhere"], "--metrics"),
    ],
)
def test_bad_controller_flags_are_one_line_errors(flags, words, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        netagg_main(["controller", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_ctl_delete_has_force_and_stats_says_rates(capsys) -> None:
    with pytest.raises(SystemExit):
        netagg_main(["ctl", "delete", "--help"])
    assert "--force" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        netagg_main(["ctl", "--help"])
    assert "--retry-for" in capsys.readouterr().out
