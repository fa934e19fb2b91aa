from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from netagg.cli.launch import SwitchProcess


@pytest.fixture
def switch_factory(tmp_path: Path) -> Iterator:
    """Start ``netagg switch`` processes; every one is stopped by PID at the end of the test."""
    started: list[SwitchProcess] = []

    def start(workers: int, **kwargs) -> SwitchProcess:
        kwargs.setdefault("stats_file", tmp_path / f"switch{len(started)}.json")
        sw = SwitchProcess(workers, **kwargs)
        started.append(sw)
        return sw

    yield start
    for sw in started:
        sw.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
