"""The front door (netagg.cli) without running anything: every subcommand's help shows an example and
describes every flag, --version, and netagg's layering (only its CLI drives the role packages)."""

from __future__ import annotations

import argparse
import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import netagg
from netagg.cli import main
from netagg.cli.launch import ready_event
from netagg.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
ROLE_PACKAGES = {"switch", "host_agent", "controller", "mininet_topos"}


def _parsers(
    p: argparse.ArgumentParser, path: str = "netagg"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_every_subcommand_shows_an_example_and_describes_every_flag() -> None:
    parsers = dict(_parsers(build_parser()))
    assert {"netagg switch", "netagg bmv2", "netagg controller", "netagg ctl create", "netagg demo"} <= set(
        parsers
    )
    for path, p in parsers.items():
        assert p.epilog and "example" in p.epilog and "netagg" in p.epilog, path
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{path} {'/'.join(action.option_strings) or action.dest}: no help"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"netagg {netagg.__version__}"


def test_ready_event_is_the_json_line_and_nothing_else() -> None:
    line = '{"event": "ready", "role": "switch", "data": "127.0.0.1:47000", "agent": null, "pid": 7}\n'
    assert ready_event(line) == {
        "event": "ready",
        "role": "switch",
        "data": "127.0.0.1:47000",
        "agent": None,
        "pid": 7,
    }
    assert ready_event('{"counters": {}, "drops": {}}') is None  # a switch's counters at exit
    assert ready_event("netagg switch on 127.0.0.1:47000: job 1") is None  # the banner is for people
    assert ready_event("{not json") is None


def test_only_the_cli_of_netagg_imports_the_role_packages() -> None:
    offenders = []
    for path in sorted((ROOT / "netagg").rglob("*.py")):
        rel = path.relative_to(ROOT / "netagg")
        if rel.parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"netagg/{rel}: {n}" for n in names if n.split(".")[0] in ROLE_PACKAGES]
    assert offenders == []


def test_experiment_link_flag() -> None:
    from netagg.cli.experiment import parse_link

    assert parse_link("leaf1-spine1:bw=50") == ("leaf1", "spine1", 50.0, None, 0.0)
    assert parse_link("h1-s1:bw=10,delay=2,loss=1.5") == ("h1", "s1", 10.0, 2.0, 1.5)
    for bad, why in (
        ("h1s1:bw=1", "expected A-B"),
        ("h1-s1:rate=1", "unknown parameter 'rate'"),
        ("h1-s1:bw=x", "needs a number"),
        ("h1-s1:loss=100", "out of range"),
        ("h1-s1:bw=0", "out of range"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_link(bad)
