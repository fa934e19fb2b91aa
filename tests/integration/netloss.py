"""Packet loss on a namespace's link for the tests: tc netem where the kernel has sch_netem, else an
nftables rule that drops the same share of UDP datagrams in and out (for the worker a local drop looks
like a lost datagram: it retransmits)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from mininet_topos.netns import nft_loss


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def add_loss(ns: str, percent: int, dev: str = "eth0") -> str:
    """Lose ``percent`` % of the packets of namespace ``ns``; returns "netem" or "nftables", or skips the
    test saying why neither is available."""
    r = _run(
        "ip",
        "netns",
        "exec",
        ns,
        "tc",
        "qdisc",
        "add",
        "dev",
        dev,
        "root",
        "netem",
        "loss",
        f"{percent}%",
        check=False,
    )
    if r.returncode == 0:
        return "netem"
    if shutil.which("nft") is None:
        pytest.skip(
            f"no tc netem ({r.stderr.strip()}) and no nft (apt-get install nftables) to lose packets with"
        )
    nft_loss(ns, percent)
    return "nftables"


def nft_dropped(ns: str) -> int:
    """Datagrams the nftables loss rules of ``ns`` dropped so far."""
    listing = _run("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "loss").stdout
    return sum(int(n) for n in re.findall(r"packets (\d+)", listing))


def netem_missing() -> str | None:
    """Why tc netem cannot be used here (None if it can): probed in a namespace of our own."""
    ns = f"nlprobe{os.getpid() % 100000}"
    _run("ip", "netns", "add", ns)
    try:
        r = _run(
            "ip",
            "netns",
            "exec",
            ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "netem",
            "loss",
            "1%",
            check=False,
        )
        return (
            None
            if r.returncode == 0
            else f"tc netem unavailable ({r.stderr.strip()}): the kernel lacks sch_netem"
        )
    finally:
        _run("ip", "netns", "del", ns, check=False)
