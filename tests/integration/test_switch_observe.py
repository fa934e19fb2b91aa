"""The switch shows what it does: ``--metrics`` (Prometheus text), ``--pcap`` (a capture that scapy and
tshark read), ``-v`` (INFO logging), ``--key-file``; each on a real ``netagg switch`` process with real
workers on loopback."""

from __future__ import annotations

import collections
import concurrent.futures
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from host_agent import Worker
from netagg.cli.launch import ready_event
from netagg.protocol import HEADER, MsgType, join_packet, pack_header

pytestmark = pytest.mark.integration


def _allreduce(address: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """One allreduce of ``inputs`` (one per rank) by as many Workers on threads; their results."""
    world = len(inputs)
    with concurrent.futures.ThreadPoolExecutor(world) as pool:
        workers = list(pool.map(lambda r: Worker(address, r, world, timeout=20.0), range(world)))
        try:
            return list(pool.map(lambda r: workers[r].allreduce(inputs[r]), range(world)))
        finally:
            for w in workers:
                w.close()


def _scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET http://ADDRESS/metrics: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _inputs(world: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(-(1 << 20), 1 << 20, size, dtype=np.int32) for _ in range(world)]


def test_metrics_endpoint_counts_the_jobs_allreduce(switch_factory) -> None:
    sw = switch_factory(2, extra=["--metrics", "127.0.0.1:0"])
    address = sw.ready["metrics"]
    assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    job = (("job", "1"),)
    before = _scrape(address)
    assert before[("netagg_switch_up", ())] == 1
    assert before[("netagg_job_workers", job)] == 2
    assert before[("netagg_job_completions_total", job)] == 0

    inputs = _inputs(2, 100_000)  # 7 packets of 16,370 elements per worker
    results = _allreduce(sw.address, inputs)
    expected = inputs[0] + inputs[1]
    assert all(np.array_equal(r, expected) for r in results)

    after = _scrape(address)
    packets_in = (("direction", "in"), ("job", "1"))
    assert (
        after[("netagg_job_packets_total", packets_in)]
        >= before[("netagg_job_packets_total", packets_in)] + 2 + 14
    )
    assert after[("netagg_job_completions_total", job)] >= 7
    assert after[("netagg_job_contributions_total", job)] >= 14
    assert after[("netagg_job_joined_workers", job)] == 2
    assert after[("netagg_job_epoch", job)] >= 1
    assert after[("netagg_job_running", job)] == 1
    sent = after[("netagg_switch_packets_total", (("direction", "out"),))]
    assert sent >= 2 * 7 + 2  # a RESULT per use to each worker, and the JOIN_ACKs
    assert after[("netagg_switch_bytes_total", (("direction", "out"),))] > 2 * expected.nbytes
    assert after[("netagg_switch_drops_total", (("reason", "bad_version"),))] == 0

    # A stray contribution of an old epoch is refused, and counted under its job and reason.
    host, port = sw.address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5.0)
        s.sendto(
            pack_header(MsgType.CONTRIB, epoch=0, job=1, worker=0, count=1) + bytes(4), (host, int(port))
        )
        assert HEADER.unpack_from(s.recv(65536))[1] == MsgType.REFUSE
    last = _scrape(address)
    assert last[("netagg_job_drops_total", (("job", "1"), ("reason", "stale_epoch")))] == 1
    assert last[("netagg_job_refusals_total", job)] == after[("netagg_job_refusals_total", job)] + 1
    assert last[("netagg_switch_refusals_total", ())] == after[("netagg_switch_refusals_total", ())] + 1
    stats = sw.stop()
    assert stats is not None
    assert stats["counters"]["completions"] == last[("netagg_switch_completions_total", ())]


@pytest.mark.parametrize("elements", [64, None], ids=["small-gso", "large"])
def test_pcap_holds_every_datagram_both_ways(switch_factory, tmp_path: Path, elements: int | None) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.utils import rdpcap

    from netagg.scapy_layer import NetAgg
    from switch.pcap import bind_netagg

    path = tmp_path / "switch.pcap"
    sw = switch_factory(2, elements=elements, extra=["--pcap", str(path)])
    inputs = _inputs(2, 1000)
    expected = inputs[0] + inputs[1]
    results = _allreduce(sw.address, inputs)
    assert all(np.array_equal(r, expected) for r in results)
    stats = sw.stop()  # the capture is complete once the switch has stopped
    assert stats is not None

    host, port = sw.address.rsplit(":", 1)
    bind_netagg(int(port))
    packets = rdpcap(str(path))
    counters = stats["counters"]
    assert len(packets) == counters["packets_in"] + counters["packets_out"]
    received = [p for p in packets if p[UDP].dport == int(port)]
    sent = [p for p in packets if p[UDP].sport == int(port)]
    assert len(received) == counters["packets_in"] and len(sent) == counters["packets_out"]
    assert all(p[IP].dst == host for p in received) and all(p[IP].src == host for p in sent)
    kinds = collections.Counter(p[NetAgg].type for p in packets)
    n = elements or 16370
    chunks = -(-1000 // n)
    assert kinds[MsgType.JOIN] >= 2 and kinds[MsgType.JOIN_ACK] == 2
    assert kinds[MsgType.CONTRIB] >= 2 * chunks and kinds[MsgType.RESULT] >= 2 * chunks
    assert all(len(p[NetAgg].values) == p[NetAgg].count for p in packets)

    # Every RESULT carries the sum of its chunk (chunk c is slot c here: one use per slot, from 0).
    worker_ports = {p[UDP].sport for p in received if p[NetAgg].type == MsgType.JOIN}
    assert len(worker_ports) == 2
    results_seen = collections.defaultdict(set)
    for p in sent:
        if p[NetAgg].type != MsgType.RESULT:
            continue
        c = p[NetAgg].slot
        assert p[NetAgg].seq == 0 and p[NetAgg].bitmap == 0b11
        assert p[NetAgg].values == expected[c * n : (c + 1) * n].tolist()
        results_seen[c].add(p[UDP].dport)
    assert sorted(results_seen) == list(range(chunks))
    assert all(ports == worker_ports for ports in results_seen.values())


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (apt-get install tshark)")
def test_tshark_reads_the_pcap(switch_factory, tmp_path: Path) -> None:
    path = tmp_path / "switch.pcap"
    sw = switch_factory(2, extra=["--pcap", str(path)])
    _allreduce(sw.address, _inputs(2, 40_000))
    stats = sw.stop()
    assert stats is not None
    port = sw.address.rsplit(":", 1)[1]
    out = subprocess.run(
        [
            *("tshark", "-n", "-r", str(path), "-d", f"udp.port=={port},data", "-T", "fields"),
            *("-e", "udp.srcport", "-e", "udp.dstport", "-e", "udp.length"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert len(rows) == stats["counters"]["packets_in"] + stats["counters"]["packets_out"]
    assert sum(1 for _, dst, _ in rows if dst == port) == stats["counters"]["packets_in"]
    assert sum(int(length) - 8 for src, _, length in rows if src == port) == stats["counters"]["bytes_out"]


def _switch_log(tmp_path: Path, *flags: str) -> str:
    """Run ``netagg switch --workers 1 FLAGS`` through one allreduce and a SIGTERM; its stderr."""
    log = tmp_path / "switch.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "netagg.cli",
                "switch",
                "--workers",
                "1",
                "--listen",
                "127.0.0.1:0",
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            assert proc.stdout is not None
            event = ready_event(proc.stdout.readline())
            assert event is not None, log.read_text()
            _allreduce(event["data"], _inputs(1, 10))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, log.read_text()
    return log.read_text()


def test_verbose_logs_info_with_time_level_and_logger(tmp_path: Path) -> None:
    assert " INFO " not in _switch_log(tmp_path)
    lines = [line for line in _switch_log(tmp_path, "-v").splitlines() if " INFO " in line]
    assert any(" switch.udp INFO netagg switch serving on" in line for line in lines), lines
    assert any(" netagg.switch INFO job 1: " in line for line in lines), lines  # the dataplane's joins
    assert all(line[:4].isdigit() for line in lines)  # 2026-12-01 17:00:00,123 ...
    assert len(lines) < 50, "INFO is not per packet"


def _join_answer(address: str, key: int) -> int | None:
    """Send one JOIN carrying ``key`` and return the type of the switch's answer (None: no answer)."""
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.sendto(join_packet(1, 0, 12345, key=key), (host, int(port)))
        try:
            data = s.recv(65536)
        except TimeoutError:
            return None
    return int(HEADER.unpack_from(data)[1])


def test_key_file_keys_the_static_job(switch_factory, tmp_path: Path) -> None:
    (tmp_path / "job.key").write_text("00112233445566ff\n")
    sw = switch_factory(2, extra=["--key-file", str(tmp_path / "job.key")])
    assert _join_answer(sw.address, 0x1122) in (None, MsgType.REFUSE)
    assert _join_answer(sw.address, 0x00112233445566FF) == MsgType.PENDING  # one of two joined
    stats = sw.stop()
    assert stats is not None and stats["drops"]["bad_key"] == 1
