"""The gRPC contract in proto/netagg/v1: documented, versioned, and what the generated code offers."""

from __future__ import annotations

import re
from pathlib import Path

from netagg.v1 import control_pb2, control_pb2_grpc

PROTO = Path(__file__).resolve().parents[2] / "proto" / "netagg" / "v1" / "control.proto"
_FIELD = re.compile(r"^\s*(repeated\s+|map<[^>]+>\s+)?[A-Za-z_][\w.]*\s+\w+\s*=\s*\d+\s*;")
_ENUM_VALUE = re.compile(r"^\s*[A-Z][A-Z0-9_]*\s*=\s*\d+\s*;")
_RPC = re.compile(r"^\s*rpc\s+\w+")


def test_package_is_versioned() -> None:
    text = PROTO.read_text()
    assert re.search(r"^package netagg\.v1;$", text, re.M)
    assert control_pb2.DESCRIPTOR.package == "netagg.v1"


def test_every_rpc_field_and_enum_value_is_commented() -> None:
    lines = PROTO.read_text().splitlines()
    undocumented = []
    in_enum = False
    for i, line in enumerate(lines):
        if re.match(r"^\s*enum\s", line):
            in_enum = True
        elif line.strip() == "}":
            in_enum = False
        is_item = _RPC.match(line) or _FIELD.match(line) or (in_enum and _ENUM_VALUE.match(line))
        if not is_item:
            continue
        # A comment on the line before, or on the line before a run of sibling fields sharing it.
        j = i - 1
        while j >= 0 and _FIELD.match(lines[j]) and not lines[j].strip().startswith("//"):
            j -= 1
        if j < 0 or not lines[j].strip().startswith("//"):
            msg_line = line.strip()
            # Messages whose only field is self-explanatory are allowed no comment: none here.
            undocumented.append(f"{i + 1}: {msg_line}")
    assert not undocumented, "undocumented: " + "; ".join(undocumented)


def test_enum_zero_values_are_unspecified() -> None:
    for enum in control_pb2.DESCRIPTOR.enum_types_by_name.values():
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), (enum.name, zero)


def test_services_offer_what_the_issues_name() -> None:
    controller = control_pb2.DESCRIPTOR.services_by_name["Controller"]
    assert {m.name for m in controller.methods} >= {
        "CreateJob",
        "GetJob",
        "ListJobs",
        "DeleteJob",
        "JoinJob",
        "RegisterSwitch",
        "ListSwitches",
        "StreamStats",
    }
    assert controller.methods_by_name["StreamStats"].server_streaming
    agent = control_pb2.DESCRIPTOR.services_by_name["SwitchAgent"]
    assert {m.name for m in agent.methods} >= {
        "GetInfo",
        "InstallJob",
        "RemoveJob",
        "GetCounters",
        "ResetCounters",
    }
    assert hasattr(control_pb2_grpc, "add_ControllerServicer_to_server")
    assert hasattr(control_pb2_grpc, "SwitchAgentStub")


def test_messages_round_trip() -> None:
    req = control_pb2.InstallJobRequest(
        wire_job_id=7,
        workers=4,
        total_workers=4,
        slot_base=32,
        slots=16,
        elements_per_packet=64,
        worker_addresses=["10.0.0.1:5000", "10.0.0.2:5000"],
        multicast_group="239.255.0.1:47001",
    )
    back = control_pb2.InstallJobRequest.FromString(req.SerializeToString())
    assert back == req and list(back.worker_addresses) == ["10.0.0.1:5000", "10.0.0.2:5000"]
    counters = control_pb2.Counters(counters={"packets_in": 3}, drops={"bad_slot": 1})
    assert control_pb2.Counters.FromString(counters.SerializeToString()).drops["bad_slot"] == 1
