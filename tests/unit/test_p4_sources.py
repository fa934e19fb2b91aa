"""What can be checked of the P4 program without BMv2: the constants the driver reads from
p4/include/config.p4 agree with the Python switch (the conformance cases, on the Python switch and on
BMv2, are tests/conformance/)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from netagg.protocol import (
    JOIN_ACK_PARAMS,
    JOIN_WORDS,
    ROOT_ALL,
    VERSION,
    Coll,
    Flag,
    MsgType,
    Reason,
    ReduceOp,
    join_packet,
)
from switch.bmv2 import (
    JOB_JOINED_MASK,
    LOG_LEVELS,
    P4_DIR,
    Bmv2Process,
    counter_names,
    key_words,
    p4_constants,
)
from switch.core import DROP_REASONS


def test_drop_reasons_are_the_python_switchs() -> None:
    constants = p4_constants()
    names = counter_names("DROP_", constants)
    assert [names[i] for i in range(constants["NUM_DROP_REASONS"])] == list(DROP_REASONS)


def test_events_and_sizes() -> None:
    constants = p4_constants()
    events = counter_names("EV_", constants)
    assert sorted(events) == list(range(constants["NUM_EVENTS"]))
    assert {"packets_in", "contributions", "completions", "repeats", "epochs"} <= set(events.values())
    assert constants["NETAGG_ELEMENTS"] % 8 == 0 and 8 <= constants["NETAGG_ELEMENTS"] <= 64
    assert constants["NETAGG_PORT"] == 47000


def test_message_types_flags_reasons_and_payloads_are_the_protocols() -> None:
    """config.p4's numbers for the wire (docs/protocol.md) are netagg.protocol's."""
    c = p4_constants()
    assert {m.name: c[f"TYPE_{m.name}"] for m in MsgType} == {m.name: int(m) for m in MsgType}
    assert {f.name: c[f"FLAG_{f.name}"] for f in Flag} == {f.name: int(f) for f in Flag}
    assert c["NETAGG_VERSION"] == VERSION
    # the op field: collectives, reductions, the root of a reduce-scatter for every worker
    assert {k[len("COLL_") :].lower(): v for k, v in c.items() if k.startswith("COLL_")} == {
        x.name: int(x) for x in Coll
    }
    assert {k[len("REDUCE_") :].lower(): v for k, v in c.items() if k.startswith("REDUCE_")} == {
        x.name: int(x) for x in ReduceOp
    }
    assert c["ROOT_ALL"] == ROOT_ALL
    assert {k[len("REASON_") :].lower(): v for k, v in c.items() if k.startswith("REASON_")} == {
        r.name: int(r) for r in Reason
    }
    assert c["JOIN_WORDS"] == JOIN_WORDS and c["JOIN_ACK_WORDS"] == len(JOIN_ACK_PARAMS)
    # every refused reason is a drop reason of the same name
    drops = set(counter_names("DROP_", c).values())
    assert {r.name for r in Reason} <= drops
    # the rate limit of "Refusals": 1,000 per second, bursts of 100
    assert c["REFUSE_INTERVAL_US"] == 1000 and c["REFUSE_BURST"] == 100


def test_the_driver_splits_keys_as_a_join_carries_them() -> None:
    key = 0x0123456789ABCDEF
    hi, lo = key_words(key)
    assert (hi, lo) == (0x01234567, 0x89ABCDEF)
    assert join_packet(1, 0, 5, key=key)[24:32] == hi.to_bytes(4, "big") + lo.to_bytes(4, "big")


def test_every_control_is_wired_into_the_top_file() -> None:
    top = (P4_DIR / "netagg.p4").read_text()
    for control in sorted((P4_DIR / "controls").glob("*.p4")):
        assert f'"controls/{control.name}"' in top or control.name == "reply.p4", control.name


def test_the_driver_clears_the_joined_field_where_the_program_keeps_it() -> None:
    state = (P4_DIR / "include" / "state.p4").read_text()
    m = re.search(r"#define JOB_JOINED\(s\) s\[(\d+):(\d+)\]", state)
    assert m is not None, "JOB_JOINED not found in state.p4"
    hi, lo = int(m[1]), int(m[2])
    assert ((1 << (hi - lo + 1)) - 1) << lo == JOB_JOINED_MASK


def test_a_bad_log_level_is_refused_before_simple_switch_is_looked_for() -> None:
    assert "off" in LOG_LEVELS and "trace" in LOG_LEVELS
    with pytest.raises(ValueError, match="log_level must be one of trace, debug"):
        Bmv2Process(Path("nowhere.json"), {}, log_level="loud")


def test_the_cli_offers_the_drivers_log_levels() -> None:
    from netagg import cli  # its --log-level choices are written out (importing switch.bmv2 pulls in grpc)

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flag = next(a for a in sub.choices["bmv2"]._actions if "--log-level" in a.option_strings)
    assert flag.choices is not None and tuple(flag.choices) == LOG_LEVELS
