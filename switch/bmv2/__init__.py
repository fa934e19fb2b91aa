"""netagg on BMv2: the ``simple_switch`` process and its toolchain (:mod:`switch.bmv2.process`), the
table driver that implements :class:`switch.backend.SwitchBackend` over it (:mod:`switch.bmv2.driver`),
and the veth rig that drives a switch with raw frames in tests and benchmarks (:mod:`switch.bmv2.veth`).

Example::

    from switch.bmv2 import Bmv2Backend, Bmv2Process, HostPort, compile_p4
    from switch.agent import serve_backend

    switch = Bmv2Process(compile_p4(P4_DIR / "netagg.p4", Path("build/p4")), {1: "veth1", 2: "veth2"})
    server, port = serve_backend(Bmv2Backend(switch, ip, mac, hosts), "0.0.0.0:50052", tokens)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from switch.bmv2.driver import JOB_JOINED_MASK, Bmv2Backend, HostPort, counter_names, key_words, short_names
from switch.bmv2.process import (
    LOG_LEVELS,
    P4_DIR,
    PREFIX_ENV,
    Bmv2Error,
    Bmv2Process,
    cli_command,
    compile_p4,
    find_binary,
    p4_constants,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from switch.agent import SwitchAgentService

__all__ = [
    "LOG_LEVELS",
    "P4_DIR",
    "PREFIX_ENV",
    "Bmv2Agent",
    "Bmv2Backend",
    "Bmv2Error",
    "Bmv2Process",
    "HostPort",
    "cli_command",
    "compile_p4",
    "find_binary",
    "p4_constants",
    # the driver's reading of p4/include and the compiled program (tests/unit/test_p4_sources.py checks
    # them against the sources)
    "JOB_JOINED_MASK",
    "counter_names",
    "key_words",
    "short_names",
]


def Bmv2Agent(  # noqa: N802 (the class this name used to be)
    switch: Bmv2Process,
    switch_ip: str,
    switch_mac: str,
    hosts: Sequence[HostPort],
    *,
    config: Path | None = None,
) -> SwitchAgentService:
    """The SwitchAgent servicer for a running switch: ``SwitchAgentService(Bmv2Backend(...))`` (the
    backend is its ``.backend``). Kept for callers of the old name; new code uses :class:`Bmv2Backend`."""
    from switch.agent import SwitchAgentService

    return SwitchAgentService(Bmv2Backend(switch, switch_ip, switch_mac, hosts, config=config))
