"""The switch's observability parts without a socket: the Prometheus families of a counter snapshot, the
pcap writer read back by scapy, and the switch's flags (--key-file, --pcap, --join-refresh, -v)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from netagg.cli import main
from netagg.cli._common import _apply_verbose, read_key_file
from netagg.cli.main import build_parser
from netagg.protocol import MsgType, join_packet, pack_header
from netagg.scapy_layer import NetAgg
from switch.core import JobConfig
from switch.daemon import PythonSwitchOptions
from switch.jobs import Segments
from switch.metrics import Snapshot, SwitchCollector
from switch.pcap import Capture, bind_netagg

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _exposition(collector: SwitchCollector) -> tuple[str, Samples]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


STATS = {
    "counters": {"packets_in": 40, "bytes_in": 4000, "packets_out": 30, "bytes_out": 3000, "completions": 9,
                 "send_errors": 2},
    "drops": {"bad_version": 3, "not_joined": 1},
}  # fmt: skip
JOBS = {
    1: {"packets_in": 25, "bytes_in": 2500, "completions": 6, "offers": 1, "drops": {"stale_epoch": 4},
        "joined": 2, "epoch": 3, "running": True},
    7: {"packets_in": 5, "bytes_in": 500, "completions": 3, "drops": {}, "joined": 0, "epoch": 255},
}  # fmt: skip


def test_switch_and_job_series() -> None:
    text, s = _exposition(SwitchCollector(lambda: Snapshot(STATS, JOBS, {1: 2, 7: 4}), kind="python"))
    assert s[("netagg_switch_up", ())] == 1
    assert s[("netagg_switch_info", (("kind", "python"),))] == 1
    assert s[("netagg_switch_jobs", ())] == 2
    assert s[("netagg_switch_packets_total", (("direction", "in"),))] == 40
    assert s[("netagg_switch_bytes_total", (("direction", "out"),))] == 3000
    assert s[("netagg_switch_completions_total", ())] == 9
    assert s[("netagg_switch_send_errors_total", ())] == 2  # a counter the list does not name
    assert s[("netagg_switch_recoveries_total", ())] == 0  # named ones exist from the start
    assert s[("netagg_switch_drops_total", (("reason", "bad_version"),))] == 3
    one, seven = (("job", "1"),), (("job", "7"),)
    assert s[("netagg_job_packets_total", (("direction", "in"), *one))] == 25
    assert ("netagg_job_packets_total", (("direction", "out"), *one)) not in s  # not counted per job
    assert s[("netagg_job_bytes_total", (("direction", "in"), *seven))] == 500
    assert s[("netagg_job_completions_total", one)] == 6 and s[("netagg_job_completions_total", seven)] == 3
    assert s[("netagg_job_offers_total", one)] == 1 and s[("netagg_job_offers_total", seven)] == 0
    assert s[("netagg_job_drops_total", (*one, ("reason", "stale_epoch")))] == 4
    assert s[("netagg_job_joined_workers", one)] == 2 and s[("netagg_job_workers", seven)] == 4
    assert s[("netagg_job_epoch", seven)] == 255
    assert s[("netagg_job_running", one)] == 1 and ("netagg_job_running_total", one) not in s
    # One family per name, its samples per job: each name's TYPE line appears once.
    assert text.count("# TYPE netagg_job_completions_total counter") == 1
    assert "# TYPE netagg_job_epoch gauge" in text


def test_a_job_without_counters_yet_shows_zeros() -> None:
    _, s = _exposition(
        SwitchCollector(lambda: Snapshot({"counters": {}, "drops": {}}, {}, {3: 2}), kind="python")
    )
    assert s[("netagg_job_completions_total", (("job", "3"),))] == 0
    assert s[("netagg_job_workers", (("job", "3"),))] == 2
    assert s[("netagg_switch_packets_total", (("direction", "out"),))] == 0


def test_bmv2_switch_wide_only_and_a_failed_read_is_up_0() -> None:
    _, s = _exposition(SwitchCollector(lambda: Snapshot(STATS), kind="bmv2"))
    assert s[("netagg_switch_info", (("kind", "bmv2"),))] == 1
    assert ("netagg_switch_jobs", ()) not in s  # BMv2's counters do not say
    assert not any(name.startswith("netagg_job_") for name, _ in s)

    def gone() -> Snapshot:
        raise OSError("simple_switch (pid 1) has exited")

    _, s = _exposition(SwitchCollector(gone, kind="bmv2"))
    assert s == {("netagg_switch_up", ()): 0}


# -- pcap ------------------------------------------------------------------------------------------
def _read(path: Path, port: int) -> list:
    bind_netagg(port)
    return list(rdpcap(str(path)))


def test_capture_records_both_directions_and_splits_runs(tmp_path: Path) -> None:
    contrib = pack_header(MsgType.CONTRIB, job=1, worker=0, slot=2, count=2, seq=0) + bytes(8)
    result = (
        pack_header(MsgType.RESULT, job=1, worker=0xFFFF, slot=2, count=2, seq=0)
        + b"\0\0\0\1\xff\xff\xff\xfe"
    )
    path = tmp_path / "c.pcap"
    with Capture(path, ("10.0.0.254", 40001)) as cap:
        cap.received(join_packet(1, 0, 99), 0, ("10.0.0.1", 5000))
        cap.received(contrib * 3, len(contrib), ("10.0.0.1", 5000))  # a GRO run of three
        cap.sent(
            [
                (result, [("10.0.0.1", 5000), ("10.0.0.2", 5001)]),
                (Segments(result * 2, len(result)), [("10.0.0.3", 7)]),
            ]
        )
        assert cap.records == 1 + 3 + 2 + 2
    packets = _read(path, 40001)
    assert [p[NetAgg].type for p in packets] == [1, 3, 3, 3, 4, 4, 4, 4]
    assert [(p[IP].src, p[UDP].sport, p[IP].dst, p[UDP].dport) for p in packets[3:6]] == [
        ("10.0.0.1", 5000, "10.0.0.254", 40001),
        ("10.0.0.254", 40001, "10.0.0.1", 5000),
        ("10.0.0.254", 40001, "10.0.0.2", 5001),
    ]
    assert packets[4][NetAgg].values == [1, -2] and packets[7][UDP].dport == 7
    assert all(p[UDP].len == 8 + len(bytes(p[NetAgg])) for p in packets)
    assert all(p.time > 0 for p in packets)


def test_capture_ipv6_has_a_valid_udp_checksum(tmp_path: Path) -> None:
    path = tmp_path / "v6.pcap"
    with Capture(path, ("::1", 47000)) as cap:
        cap.received(join_packet(1, 1, 5), 0, ("::1", 50000, 0, 0))
    (p,) = _read(path, 47000)
    assert p[IPv6].src == "::1" and p[UDP].sport == 50000 and p[UDP].dport == 47000
    sent = p[UDP].chksum
    assert sent != 0  # 0 means "none", which IPv6 does not allow
    del p[UDP].chksum
    assert p.__class__(bytes(p))[UDP].chksum == sent  # scapy computes the one it was told to forget


# -- flags -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "a job key is up to 16 hex digits"),
        ("0123456789abcdef0", "a job key is up to 16 hex digits"),
        ("xyz", "a job key is up to 16 hex digits"),
        ("0000000000000000", "the key is 0, which means no key"),
    ],
)
def test_bad_key_files(tmp_path: Path, text: str, error: str) -> None:
    (tmp_path / "k").write_text(text)
    with pytest.raises(ValueError, match=error):
        read_key_file(tmp_path / "k")


def test_key_file(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("  0x00112233445566FF\n")
    assert read_key_file(tmp_path / "k") == 0x00112233445566FF
    with pytest.raises(ValueError, match=f"--key-file {tmp_path / 'nope'}: No such file"):
        read_key_file(tmp_path / "nope")
    (tmp_path / "b").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not text"):
        read_key_file(tmp_path / "b")


def test_bad_switch_flags_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "k").write_text("not a key")
    cases = [
        (["--workers", "2", "--key-file", str(tmp_path / "k")], "a job key is up to 16 hex digits"),
        (
            ["--agent", "127.0.0.1:0", "--token", "0123456789abcdef", "--key-file", str(tmp_path / "k")],
            "give --workers too",
        ),
        (["--workers", "2", "--join-refresh", "0"], "--join-refresh must be positive"),
        (
            ["--workers", "2", "--ethernet", "eth0", "--ip", "10.0.0.1", "--pcap", "x.pcap"],
            "capture the interfaces",
        ),
    ]
    for argv, error in cases:
        assert main(["switch", *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("netagg switch: error: ") and error in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        main(["switch", "--workers", "2", "--metrics", "nowhere"])
    assert "--metrics: expected HOST:PORT" in capsys.readouterr().err


def test_options_check_what_they_are_given() -> None:
    job = (JobConfig(job_id=1, workers=2, slots=4, elements=64),)
    with pytest.raises(ValueError, match="join_refresh must be positive"):
        PythonSwitchOptions(jobs=job, join_refresh=0)
    with pytest.raises(ValueError, match="--pcap captures the UDP switch"):
        PythonSwitchOptions(jobs=job, ethernet=("eth0",), ip="10.0.0.1", pcap=Path("x.pcap"))
    assert PythonSwitchOptions(jobs=job, metrics=("127.0.0.1", 0)).metrics == ("127.0.0.1", 0)


@pytest.fixture
def root_level() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level = root.level
    yield root
    root.setLevel(level)


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["switch", "--workers", "1"], None),
        (["switch", "--workers", "1", "-v"], logging.INFO),
        (["-v", "switch", "--workers", "1"], logging.INFO),
        (["switch", "--workers", "1", "-vv"], logging.DEBUG),
        (["-v", "switch", "-v", "--workers", "1"], logging.DEBUG),
        (["bmv2", "-i", "1@v", "--switch-ip", "10.0.0.1", "-v"], logging.INFO),
    ],
)
def test_verbose_after_the_subcommand(root_level: logging.Logger, argv: list[str], level: int | None) -> None:
    root_level.setLevel(logging.WARNING)
    _apply_verbose(build_parser().parse_args(argv))
    assert root_level.level == (level or logging.WARNING)
