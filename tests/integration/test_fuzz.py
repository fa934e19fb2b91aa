"""100,000 random and mutated datagrams at a running switch: no crash, drops counted by reason, sums exact."""

from __future__ import annotations

import json
import random
import socket
import time

import numpy as np

from netagg.cli.launch import run_workers
from netagg.protocol import HEADER, VERSION, MsgType
from tests.integration import workers as wk

W = 4
ELEMENTS = 256


def valid(rng: random.Random) -> bytearray:
    mtype = rng.choice([MsgType.CONTRIB] * 8 + [MsgType.JOIN, MsgType.RESULT, MsgType.PENDING])
    count = rng.randrange(0, ELEMENTS + 1) if mtype == MsgType.CONTRIB else 0
    seq = rng.randrange(0, 8)
    hdr = HEADER.pack(
        VERSION,
        mtype,
        rng.randrange(4),
        rng.randrange(3),
        1,
        rng.randrange(W),
        rng.randrange(32) | (0x8000 if seq & 1 else 0),
        count,
        seq,
        rng.randrange(2000),
        0,
        0,
    )
    return bytearray(hdr + rng.randbytes(4 * count))


def mutate(rng: random.Random, pkt: bytearray) -> tuple[bytes, str]:
    kind = rng.randrange(9)
    if kind == 0:
        return bytes(pkt[: rng.randrange(0, 24)]), "truncated"
    if kind == 1:
        pkt[0] = rng.choice([0, 1, 3, 255])  # 1: the protocol's first version
        return bytes(pkt), "bad_version"
    if kind == 2:
        return bytes(pkt[: rng.randrange(24, len(pkt))] if len(pkt) > 24 else pkt + b"\x01"), "bad_length"
    if kind == 3:
        pkt[4:6] = rng.randrange(2, 65536).to_bytes(2, "big")
        pkt[1] = MsgType.CONTRIB
        return bytes(pkt), "unknown_job"
    if kind == 4:
        pkt[1] = MsgType.CONTRIB
        pkt[8:10] = (rng.randrange(32, 0x7FFF) | (pkt[8] & 0x80) << 8).to_bytes(2, "big")
        return bytes(pkt), ""  # bad_slot (or an earlier check)
    if kind == 5:
        pkt[1] = MsgType.CONTRIB
        pkt[6:8] = rng.randrange(W, 65536).to_bytes(2, "big")
        return bytes(pkt), "bad_worker"
    if kind == 6:
        return rng.randbytes(rng.randrange(0, 1400)), ""
    if kind == 7:  # flip random bytes anywhere
        for _ in range(rng.randrange(1, 6)):
            pkt[rng.randrange(len(pkt))] = rng.randrange(256)
        return bytes(pkt), ""
    return bytes(pkt), ""  # well-formed but forged: not from a joined worker's address


def blast(port: int, n: int, seed: int, joins: bool) -> dict[str, int]:
    rng = random.Random(seed)
    expect: dict[str, int] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(n):
            data, reason = mutate(rng, valid(rng))
            if not joins and len(data) > 1 and data[1] == MsgType.JOIN:
                continue  # a well-formed JOIN legitimately starts a new round; not sent during a run
            if reason:
                expect[reason] = expect.get(reason, 0) + 1
            s.sendto(data, ("127.0.0.1", port))
            if i % 2000 == 1999:
                time.sleep(
                    0.002
                )  # stay within the switch's receive buffer: we count drops, not kernel losses
    return expect


def test_fuzz_then_exact(switch_factory, tmp_path) -> None:
    stats_file = tmp_path / "fuzz.json"
    sw = switch_factory(W, elements=ELEMENTS, slots=32, stats_file=stats_file)
    port = int(sw.address.rsplit(":", 1)[1])
    expect = blast(port, 100_000, seed=7, joins=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the switch has read them all
        if stats_file.exists():
            c = json.loads(stats_file.read_text())["counters"]
            if c.get("packets_in", 0) >= 100_000 - 200:
                break
        time.sleep(0.2)
    assert sw.alive()
    # Well-formed JOINs among the fuzz may have joined as workers; such members expire after the
    # switch's join_refresh (2 s) without refreshes (docs/protocol.md, "Joining").
    time.sleep(2.5)
    cases = [((5000,), "int32"), ((5000,), "float32")]
    out = run_workers(wk.sweep, W, sw.address, W, cases, timeout=120)
    assert all(r["ok"] for rank in out for r in rank["results"])
    stats = sw.stop()
    assert stats is not None
    drops, counters = stats["drops"], stats["counters"]
    for reason, n in expect.items():
        assert drops[reason] >= n * 0.9, (reason, drops[reason], n)  # (a few land in an earlier check)
    assert counters["packets_in"] == sum(drops.values()) + counters["joins"] + counters.get(
        "contributions", 0
    ) + counters.get("repeats", 0)
    assert counters["packets_in"] >= 100_000


def test_forged_packets_during_allreduce_change_nothing(switch_factory) -> None:
    import threading

    sw = switch_factory(W, elements=ELEMENTS, slots=32)
    port = int(sw.address.rsplit(":", 1)[1])
    done = threading.Event()

    def noise() -> None:
        seed = 100
        while not done.is_set():
            blast(port, 2000, seed, joins=False)
            seed += 1

    t = threading.Thread(target=noise, daemon=True)
    t.start()
    try:
        cases = [((50_000,), "int32"), ((50_000,), "float32")] * 3
        out = run_workers(wk.sweep, W, sw.address, W, cases, timeout=120)
    finally:
        done.set()
        t.join()
    assert all(r["ok"] for rank in out for r in rank["results"])
    stats = sw.stop()
    assert stats is not None and stats["drops"]["wrong_source"] > 0
    assert np.sum(list(stats["drops"].values())) > 1000
