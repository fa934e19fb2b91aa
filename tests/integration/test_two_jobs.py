"""Two jobs with keys on one switch (docs/protocol.md, "Job keys"), for each switch kind: JOINs without
the right key never start a round, and packets carrying job A's id, forged from job B's worker addresses
and from a host outside both jobs, never change A's sums.

The same scenario runs against the Python switch (its real UDP loop, with a socket per host on its own
loopback address) and against BMv2 (simple_switch with netagg's program, a veth pair per host driven with
raw frames); ``kind`` is the only difference. The BMv2 kind needs p4c-bm2-ss, simple_switch and root,
and skips saying which is missing.
"""

from __future__ import annotations

import dataclasses
import os
import select
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import pytest

from netagg.protocol import DEFAULT_PORT, Flag, Header, MsgType, Reason, decode, encode, join_packet
from switch.jobs import JobConfig

ROOT = Path(__file__).resolve().parents[2]
KEY_A = 0x1111222233334444
KEY_B = 0x5555666677778888
N = 64  # elements per packet (the P4 program's compiled N)
#: name -> (loopback address for the Python kind, BMv2 port's host IP, MAC)
HOSTS = {
    "a0": ("127.0.31.1", "10.97.0.1", "02:00:0a:61:00:01"),
    "a1": ("127.0.31.2", "10.97.0.2", "02:00:0a:61:00:02"),
    "b0": ("127.0.31.3", "10.97.0.3", "02:00:0a:61:00:03"),
    "b1": ("127.0.31.4", "10.97.0.4", "02:00:0a:61:00:04"),
    "x": ("127.0.31.5", "10.97.0.5", "02:00:0a:61:00:05"),
}
SWITCH_IP, SWITCH_MAC = "10.97.0.254", "02:00:0a:61:00:fe"
UDP_PORT = 41000  # every host's UDP port on the BMv2 rig


class Rig(Protocol):
    """A switch with two jobs installed and a way to talk to it from each host."""

    addr: dict[str, tuple[str, int]]
    """Each host's (IP, UDP port) as the switch sees it."""

    def send(self, host: str, data: bytes) -> None: ...
    def receive(self) -> list[tuple[str, bytes]]: ...
    def counters(self) -> dict[str, dict[str, int]]: ...
    def reinstall(self, cfg: JobConfig) -> None: ...
    def close(self) -> None: ...


def _jobs(addresses: dict[str, tuple[str, int]]) -> tuple[JobConfig, JobConfig]:
    a = JobConfig(1, 2, 4, N, slot_base=0, key=KEY_A, addresses=(addresses["a0"], addresses["a1"]))
    b = JobConfig(2, 2, 4, N, slot_base=4, key=KEY_B, addresses=(addresses["b0"], addresses["b1"]))
    return a, b


class PythonRig:
    """The Python switch's UDP loop in a thread (:class:`switch.daemon.PythonSwitch`), one UDP socket
    per host, each bound to its own loopback address."""

    def __init__(self) -> None:
        from switch.daemon import PythonSwitch, PythonSwitchOptions

        self.socks: dict[str, socket.socket] = {}
        for name, (ip, _, _) in HOSTS.items():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, 0))
            self.socks[name] = s
        self.addr = {name: s.getsockname() for name, s in self.socks.items()}
        options = PythonSwitchOptions(jobs=_jobs(self.addr), listen=("127.0.0.1", 0))
        self.switch = PythonSwitch(options).start()

    def send(self, host: str, data: bytes) -> None:
        self.socks[host].sendto(data, self.switch.address)

    def receive(self) -> list[tuple[str, bytes]]:
        return _collect({s.fileno(): (name, lambda s=s: _recv_all(s)) for name, s in self.socks.items()})

    def counters(self) -> dict[str, dict[str, int]]:
        return self.switch.backend.counters()

    def reinstall(self, cfg: JobConfig) -> None:
        """Remove ``cfg``'s job and install ``cfg`` (through the backend, as the SwitchAgent does)."""
        self.switch.backend.remove(cfg.job_id)
        self.switch.backend.install(cfg)

    def close(self) -> None:
        self.switch.stop()
        self.switch.close()
        for s in self.socks.values():
            s.close()


class Bmv2Rig:
    """simple_switch with netagg's program (:class:`switch.daemon.Bmv2Switch`) on veth pairs whose
    outer ends this process drives with raw frames."""

    def __init__(self) -> None:
        from switch.bmv2 import HostPort, compile_p4
        from switch.bmv2.veth import VethPorts
        from switch.daemon import Bmv2Switch, Bmv2SwitchOptions

        program = compile_p4(ROOT / "p4" / "netagg.p4", ROOT / "build" / "p4")
        self.veth = VethPorts(f"tj{os.getpid() % 10000}", len(HOSTS))
        self.names = list(HOSTS)
        self.addr = {name: (HOSTS[name][1], UDP_PORT) for name in HOSTS}
        hosts = tuple(HostPort(HOSTS[n][1], HOSTS[n][2], i + 1) for i, n in enumerate(self.names))
        try:
            options = Bmv2SwitchOptions(
                program, self.veth.ports(), SWITCH_IP, SWITCH_MAC, hosts, jobs=_jobs(self.addr)
            )
            self.switch = Bmv2Switch(options)
        except BaseException:
            self.veth.close()
            raise

    def send(self, host: str, data: bytes) -> None:
        from switch.ethernet import mac_bytes, udp_frame

        ip, mac = HOSTS[host][1], HOSTS[host][2]
        frame = udp_frame(mac_bytes(mac), ip, UDP_PORT, mac_bytes(SWITCH_MAC), SWITCH_IP, DEFAULT_PORT, data)
        self.veth.socks[self.names.index(host)].send(frame)

    def receive(self) -> list[tuple[str, bytes]]:
        def frames(i: int) -> list[bytes]:
            # Ethernet (14) + IPv4 (20, no options) + UDP (8); the netagg datagram is the rest (a short
            # frame may carry Ethernet padding after it: the UDP length says where it ends)
            out = []
            for f in self.veth.received(i):
                if f[12:14] == b"\x08\x00" and f[23] == 17:
                    out.append(f[42 : 34 + int.from_bytes(f[38:40], "big")])
            return out

        socks = self.veth.socks
        return _collect({s.fileno(): (self.names[i], lambda i=i: frames(i)) for i, s in enumerate(socks)})

    def counters(self) -> dict[str, dict[str, int]]:
        return self.switch.backend.counters()

    def reinstall(self, cfg: JobConfig) -> None:
        """Remove ``cfg``'s job and install ``cfg`` (through the backend, as the SwitchAgent does)."""
        self.switch.backend.remove(cfg.job_id)
        self.switch.backend.install(cfg)

    def close(self) -> None:
        self.switch.close()
        self.veth.close()


def _recv_all(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(65535, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out


def _collect(by_fd: dict, quiet: float = 0.2, first: float = 1.0) -> list[tuple[str, bytes]]:
    """What arrives at any host until nothing came for ``quiet`` s (``first`` for the first)."""
    got: list[tuple[str, bytes]] = []
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + first
    while (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            name, read = by_fd[fd]
            for data in read():
                got.append((name, data))
                deadline = time.monotonic() + quiet
    return got


def _bmv2_missing() -> str | None:
    from switch.bmv2 import find_binary

    for binary in ("p4c-bm2-ss", "simple_switch", "simple_switch_CLI"):
        if find_binary(binary) is None:
            return f"{binary} not found (on PATH or in $NETAGG_P4_PREFIX/bin; see README, BMv2)"
    if os.geteuid() != 0:
        return "needs root (veth pairs, raw sockets)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    return None


@pytest.fixture(params=["python", pytest.param("bmv2", marks=pytest.mark.bmv2)])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    if request.param == "bmv2":
        why = _bmv2_missing()
        if why is not None:
            pytest.skip(why)
        made: Rig = Bmv2Rig()
    else:
        made = PythonRig()
    try:
        yield made
    finally:
        made.close()


def _contrib(job: int, worker: int, slot: int, seq: int, values: np.ndarray, **kw: int) -> bytes:
    hdr = Header(
        MsgType.CONTRIB, job=job, worker=worker, slot=slot, set=seq & 1, seq=seq, count=values.size, **kw
    )
    return encode(hdr, values)


def _kinds(got: list[tuple[str, bytes]]) -> list[tuple[str, int, int, int]]:
    """(host, type, job, exp) of each datagram received, sorted."""
    out = []
    for host, data in got:
        h, _ = decode(data)
        out.append((host, h.type, h.job, h.exp))
    return sorted(out)


def test_keys_and_forgeries_never_touch_the_other_jobs_sums(rig: Rig) -> None:
    rng = np.random.default_rng(15)
    refuse, ack = int(MsgType.REFUSE), int(MsgType.JOIN_ACK)
    # 1. JOINs of job A without its key, with job B's key, from B's workers and from outside: none
    # starts a round (each is refused, bad_key), even when every worker of A seems to have joined.
    for host, worker, key in [("a0", 0, 0), ("a1", 1, KEY_B), ("b0", 0, KEY_B), ("b1", 1, 0), ("x", 0, 0)]:
        rig.send(host, join_packet(1, worker, 1000 + worker, key=key))
    got = rig.receive()
    assert _kinds(got) == sorted((h, refuse, 1, Reason.bad_key) for h in ("a0", "a1", "b0", "b1", "x"))
    # 2. A's key from B's workers' addresses: wrong_source (addresses are fixed), no round either.
    rig.send("b0", join_packet(1, 0, 77, key=KEY_A))
    rig.send("b1", join_packet(1, 1, 78, key=KEY_A))
    assert _kinds(rig.receive()) == [
        ("b0", refuse, 1, Reason.wrong_source),
        ("b1", refuse, 1, Reason.wrong_source),
    ]
    assert rig.counters()["counters"].get("epochs", 0) == 0
    # 3. The real JOINs: a round for each job.
    for job, key, names in ((1, KEY_A, ("a0", "a1")), (2, KEY_B, ("b0", "b1"))):
        for w, host in enumerate(names):
            rig.send(host, join_packet(job, w, 500 + 10 * job + w, key=key))
    got = rig.receive()
    pending = int(MsgType.PENDING)
    assert sorted((h, t, j) for h, t, j, _ in _kinds(got)) == [
        ("a0", ack, 1),
        ("a0", pending, 1),
        ("a1", ack, 1),
        ("b0", ack, 2),
        ("b0", pending, 2),
        ("b1", ack, 2),
    ]
    epoch = {decode(d)[0].job: decode(d)[0].epoch for _, d in got if decode(d)[0].type == ack}
    # 4. Forged packets carrying job A's id: A's worker ids and A's slot and epoch, from B's workers and
    # from outside; a contribution, an OFFER, and a JOIN with A's key that would start a new round.
    values = {h: rng.integers(-(2**31), 2**31, N, dtype=np.int64).astype(np.int32) for h in HOSTS}
    forged = []
    for host in ("b0", "b1", "x"):
        forged.append((host, _contrib(1, 0, 0, 0, values[host], epoch=epoch[1])))
        forged.append(
            (host, _contrib(1, 1, 0, 0, values[host], epoch=epoch[1], flags=Flag.OFFER | Flag.FINAL))
        )
        forged.append((host, join_packet(1, 1, 4242, key=KEY_A)))
        forged.append((host, _contrib(2, 0, 0, 0, values[host], epoch=epoch[2])))  # B's id, A's slot
    # ... interleaved with A's and B's real contributions to slot 0 (A) and slot 4 (B)
    rig.send("a0", _contrib(1, 0, 0, 0, values["a0"], epoch=epoch[1]))
    rig.send("b0", _contrib(2, 0, 4, 0, values["b0"], epoch=epoch[2]))
    for host, data in forged:
        rig.send(host, data)
    rig.send("a1", _contrib(1, 1, 0, 0, values["a1"], epoch=epoch[1]))
    rig.send("b1", _contrib(2, 1, 4, 0, values["b1"], epoch=epoch[2]))
    got = rig.receive()
    results: dict[int, dict[str, np.ndarray]] = {}
    for host, data in got:
        h, payload = decode(data)
        if h.type == MsgType.RESULT:
            results.setdefault(h.job, {})[host] = payload.astype(np.int32)
        else:
            assert h.type == MsgType.REFUSE and host in ("b0", "b1", "x"), (host, h)
    want_a = (values["a0"].astype(np.int64) + values["a1"]).astype(np.uint32).astype(np.int32)
    want_b = (values["b0"].astype(np.int64) + values["b1"]).astype(np.uint32).astype(np.int32)
    assert (
        sorted(results) == [1, 2]
        and sorted(results[1]) == ["a0", "a1"]
        and sorted(results[2]) == ["b0", "b1"]
    )
    for host in ("a0", "a1"):
        np.testing.assert_array_equal(results[1][host], want_a)
    for host in ("b0", "b1"):
        np.testing.assert_array_equal(results[2][host], want_b)
    counters = rig.counters()
    assert counters["counters"]["epochs"] == 2  # the forged JOINs started no round
    assert counters["counters"]["completions"] == 2 and counters["counters"].get("recoveries", 0) == 0
    drops = counters["drops"]
    assert drops["bad_key"] == 5 and drops["wrong_source"] == 2 + 9 and drops["bad_slot"] == 3


def test_refusals_are_rate_limited_per_job(rig: Rig) -> None:
    """docs/protocol.md, "Refusals": a token bucket per job (bursts of 100, 1,000 per second). A burst
    of 500 contributions before the round is complete gets at most 100 answers plus what the bucket
    refilled while they came; the rest is counted as suppressed; every one is counted not_joined. The
    other job's bucket is untouched: its first refusal after the burst is answered."""
    n = 500
    data = _contrib(1, 0, 0, 0, np.zeros(4, np.int32))
    start = time.monotonic()
    for i in range(n):
        rig.send("a0", data)
        if i % 10 == 9:
            time.sleep(0.001)  # BMv2's ingress queue holds a few dozen frames
    elapsed = time.monotonic() - start
    got = rig.receive()
    c = rig.counters()
    refused = c["counters"].get("refusals", 0)
    came = c["counters"]["packets_in"]  # BMv2 may lose a few to a full ingress queue on a busy machine
    assert c["drops"]["not_joined"] == came and came > 0.9 * n
    assert refused + c["counters"].get("refusals_suppressed", 0) == came
    assert len(got) == refused and all(decode(d)[0].exp == Reason.not_joined for _, d in got)
    assert 100 <= refused <= 100 + int(elapsed * 1000) + 1 < came, elapsed
    rig.send("b0", _contrib(2, 0, 4, 0, np.zeros(4, np.int32)))
    [(host, answer)] = rig.receive()
    assert host == "b0" and decode(answer)[0].type == MsgType.REFUSE


def test_a_reinstalled_job_takes_its_new_key(rig: Rig) -> None:
    """The backend replaces a job's key with the job (BMv2: its job_keys entry goes with it): the old
    key is refused, the new one starts a round, and a job without a key takes any."""
    a, _ = _jobs(rig.addr)
    new_key = 0x0BADC0FFEE0DDF00
    rig.reinstall(dataclasses.replace(a, key=new_key))
    rig.send("a0", join_packet(1, 0, 7, key=KEY_A))
    [(_, data)] = rig.receive()
    assert decode(data)[0].type == MsgType.REFUSE and decode(data)[0].exp == Reason.bad_key
    rig.send("a0", join_packet(1, 0, 7, key=new_key))
    rig.send("a1", join_packet(1, 1, 8, key=new_key))
    assert sorted(decode(d)[0].type for _, d in rig.receive()) == [MsgType.JOIN_ACK] * 2 + [MsgType.PENDING]
    rig.reinstall(dataclasses.replace(a, key=0))
    rig.send("a0", join_packet(1, 0, 9, key=KEY_B))
    rig.send("a1", join_packet(1, 1, 10))
    assert sorted(decode(d)[0].type for _, d in rig.receive()) == [MsgType.JOIN_ACK] * 2 + [MsgType.PENDING]
