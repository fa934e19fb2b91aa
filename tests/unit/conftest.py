"""tests/unit is pure: no sockets, no servers, no processes (those tests live in tests/integration).

The guard below makes a unit test that tries any of them fail, naming what it tried, so the split
cannot erode unnoticed.
"""

from __future__ import annotations

import multiprocessing.process
import socket
import subprocess
from collections.abc import Iterator

import pytest

_WHY = "tests/unit opens no sockets and starts no servers or processes: move this test to tests/integration"


class _NoSocket(socket.socket):
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"socket.socket{args}: {_WHY}")


class _NoPopen(subprocess.Popen):
    def __init__(self, args: object, *rest: object, **kwargs: object) -> None:
        raise AssertionError(f"subprocess {args!r}: {_WHY}")


def _no_process(self: object) -> None:
    raise AssertionError(f"multiprocessing {self!r}: {_WHY}")


def _no_server(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"grpc.server: {_WHY}")


@pytest.fixture(autouse=True)
def _pure(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket, "socket", _NoSocket)
    monkeypatch.setattr(subprocess, "Popen", _NoPopen)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _no_process)
    try:
        import grpc
    except ImportError:  # pragma: no cover (grpcio is a dependency)
        pass
    else:
        monkeypatch.setattr(grpc, "server", _no_server)
    yield
