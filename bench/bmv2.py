"""Packets per second through simple_switch: netagg's aggregation program against a plain forwarding
program (p4/forward.p4: same parser, deparser and L2 table), same build, same run.

Four hosts are veth pairs whose outer ends this process drives with raw frames (root needed). Each
round sends the same stream of 256-byte-payload netagg contributions (N = 64) from the four hosts:
into the aggregation program as a W = 4 job (every 4 contributions complete a slot use, whose RESULT
goes out as 4 copies), and into the forwarding program addressed to another host (each frame goes out
once). Both give one frame out per frame in. A window of frames in flight (measured from what comes
out) keeps simple_switch's queues from overflowing. Rate = frames in / seconds until the last frame
out. Rounds alternate the two programs; the report gives medians and the ratio.

    sudo .venv/bin/python bench/bmv2.py [--frames 20000] [--rounds 3] [--log-level off] [--out out/bench-bmv2]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from netagg.scapy_layer import NetAgg  # noqa: E402
from switch.bmv2 import LOG_LEVELS, Bmv2Backend, Bmv2Process, HostPort, compile_p4, find_binary  # noqa: E402
from switch.bmv2.veth import VethPorts  # noqa: E402
from switch.core import JobConfig  # noqa: E402
from switch.ethernet import mac_bytes, udp_frame  # noqa: E402

W = 4
N = 64
SLOTS = 256
SWITCH_IP, SWITCH_MAC = "10.79.0.254", "02:00:0a:4f:00:fe"
HOSTS = [HostPort(f"10.79.0.{i + 1}", f"02:00:0a:4f:00:{i + 1:02x}", i + 1) for i in range(W)]
UDP_PORT = 42000


def frame(src: HostPort, dst_mac: str, dst_ip: str, payload: bytes) -> bytes:
    return udp_frame(mac_bytes(src.mac), src.ip, UDP_PORT, mac_bytes(dst_mac), dst_ip, 47000, payload)


class Rig(VethPorts):
    """Veth pairs bb<pid>c<i> (driven here) / bb<pid>s<i> (BMv2 port i + 1); deleted by close()."""

    def __init__(self) -> None:
        super().__init__(f"bb{os.getpid() % 10000}", W, rcvbuf=8 << 20)

    def drain(self) -> int:
        """Count frames out of the switch (ignoring our own sends)."""
        return sum(sum(1 for _ in self.received(i)) for i in range(len(self.socks)))


def stream(frames: int, aggregate: bool) -> list[tuple[int, bytes]]:
    """(host index, frame): slot uses in order, each contributed by the 4 hosts."""
    out = []
    values = list(range(N))
    for k in range(frames // W):
        slot, seq = k % SLOTS, k // SLOTS
        for w, host in enumerate(HOSTS):
            pkt = bytes(
                NetAgg(
                    type="CONTRIB", job=1, worker=w, epoch=1, slot=slot, set=seq & 1, seq=seq, values=values
                )
            )
            if aggregate:
                out.append((w, frame(host, SWITCH_MAC, SWITCH_IP, pkt)))
            else:
                peer = HOSTS[(w + 1) % W]
                out.append((w, frame(host, peer.mac, peer.ip, pkt)))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(rig: Rig, frames: list[tuple[int, bytes]], window: int) -> float:
    """Send with at most ``window`` frames unanswered; seconds from the first send to the last frame out."""
    sent = got = 0
    poller = select.poll()
    for s in rig.socks:
        poller.register(s, select.POLLIN)
    t0 = time.perf_counter()
    last = t0
    deadline = time.monotonic() + 120
    while got < len(frames):
        while sent < len(frames) and sent - got < window:
            w, f = frames[sent]
            rig.socks[w].send(f)
            sent += 1
        if poller.poll(200):
            n = rig.drain()
            if n:
                got += n
                last = time.perf_counter()
        elif time.monotonic() > deadline:
            raise RuntimeError(f"only {got} of {len(frames)} frames came out")
        elif sent == len(frames) and time.perf_counter() - last > 2:
            raise RuntimeError(f"only {got} of {len(frames)} frames came out (the switch dropped some)")
    return last - t0


def join(rig: Rig) -> None:
    for w, host in enumerate(HOSTS):
        rig.socks[w].send(
            frame(host, SWITCH_MAC, SWITCH_IP, bytes(NetAgg(type="JOIN", job=1, worker=w, seq=w + 1)))
        )
    deadline = time.monotonic() + 10
    acks = 0
    while acks < W and time.monotonic() < deadline:  # 3 PENDINGs, then 4 JOIN_ACKs
        time.sleep(0.01)
        acks += rig.drain()
    time.sleep(0.2)
    rig.drain()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=20_000, help="frames per round (a multiple of 4)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=int, default=64, help="frames in flight")
    p.add_argument("--out", type=Path, default=Path("out/bench-bmv2"))
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="off",
        help="simple_switch --log-level for both programs (its own default is trace)",
    )
    args = p.parse_args(argv)
    missing = [b for b in ("p4c-bm2-ss", "simple_switch", "simple_switch_CLI") if find_binary(b) is None]
    if missing or os.geteuid() != 0:
        print(f"bench/bmv2.py: needs root and {', '.join(missing) or 'BMv2'}", file=sys.stderr)
        return 2
    build = ROOT / "build" / "p4"
    programs = {
        "netagg": compile_p4(ROOT / "p4" / "netagg.p4", build),
        "forward": compile_p4(ROOT / "p4" / "forward.p4", build),
    }
    rig = Rig()
    rates: dict[str, list[float]] = {"netagg": [], "forward": []}
    capacity: dict[str, list[float]] = {"netagg": [], "forward": []}
    try:
        for r in range(args.rounds):
            for name, program in programs.items():
                sw = Bmv2Process(program, rig.ports(), log_level=args.log_level)
                try:
                    backend = Bmv2Backend(sw, SWITCH_IP, SWITCH_MAC, HOSTS)
                    if name == "netagg":
                        backend.install(
                            JobConfig(
                                job_id=1,
                                workers=W,
                                slots=SLOTS,
                                elements=N,
                                addresses=tuple((h.ip, UDP_PORT) for h in HOSTS),
                            )
                        )
                        join(rig)
                    frames = stream(args.frames, aggregate=name == "netagg")
                    cpu0 = cpu_seconds(sw.pid)
                    seconds = run(rig, frames, args.window)
                    cpu = cpu_seconds(sw.pid) - cpu0
                    rates[name].append(len(frames) / seconds)
                    capacity[name].append(len(frames) / cpu)
                    print(
                        f"round {r + 1}/{args.rounds} {name}: {len(frames)} frames in {seconds:.2f} s = "
                        f"{rates[name][-1]:,.0f} frames/s; simple_switch used {cpu:.2f} CPU s = "
                        f"{capacity[name][-1]:,.0f} frames per CPU second",
                        flush=True,
                    )
                finally:
                    sw.stop()
    finally:
        rig.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    cap = {k: statistics.median(v) for k, v in capacity.items()}
    result = {
        "frames_per_round": args.frames,
        "rounds": args.rounds,
        "window": args.window,
        "elements_per_packet": N,
        "simple_switch": find_binary("simple_switch"),
        "log_level": args.log_level,
        "rates": rates,
        "median_frames_per_s": med,
        "ratio_netagg_over_forward": med["netagg"] / med["forward"],
        "frames_per_cpu_second": capacity,
        "median_frames_per_cpu_second": cap,
        "capacity_ratio_netagg_over_forward": cap["netagg"] / cap["forward"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bmv2.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, values, medians, label, key in (
        (axes[0], rates, med, "frames/s through simple_switch", "ratio_netagg_over_forward"),
        (axes[1], capacity, cap, "frames per simple_switch CPU second", "capacity_ratio_netagg_over_forward"),
    ):
        ax.bar(list(medians), list(medians.values()), color=["tab:blue", "tab:gray"])
        for i, k in enumerate(medians):
            ax.scatter([i] * len(values[k]), values[k], color="black", s=10, zorder=3)
        ax.set_ylabel(label)
        ax.set_title(f"netagg / forward = {result[key]:.2f}")
    fig.tight_layout()
    fig.savefig(args.out / "bmv2.png", dpi=120)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
