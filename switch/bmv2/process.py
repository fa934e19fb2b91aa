"""BMv2's ``simple_switch`` as a child process, and the toolchain around it.

:func:`compile_p4` runs ``p4c-bm2-ss``; :class:`Bmv2Process` starts ``simple_switch`` on given
interfaces, waits until its Thrift runtime answers (polling, never sleep-and-hope), runs runtime commands
through ``simple_switch_CLI`` and stops the switch by PID.

Binaries are looked up under $NETAGG_P4_PREFIX/bin first, then on PATH. ``simple_switch_CLI`` is a
Python script whose modules (``runtime_CLI``, ``bm_runtime``, ...) BMv2 installs under
``PREFIX/lib/python3*/site-packages``; it runs here with netagg's own interpreter (``sys.executable``)
and that directory on its path, so the ``thrift`` it needs is netagg's (``pip install 'netagg[bmv2]'``),
not whatever the shell's ``python3`` has.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from switch.backend import BackendError

__all__ = [
    "LOG_LEVELS",
    "P4_DIR",
    "PREFIX_ENV",
    "Bmv2Error",
    "Bmv2Process",
    "cli_command",
    "compile_p4",
    "find_binary",
    "p4_constants",
]

log = logging.getLogger(__name__)

P4_DIR = Path(__file__).resolve().parents[2] / "p4"
PREFIX_ENV = "NETAGG_P4_PREFIX"
LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "off")  # simple_switch --log-level
THRIFT_HINT = "pip install 'netagg[bmv2]'"


class Bmv2Error(BackendError, OSError):
    """simple_switch failed to start, or a runtime command failed."""


def find_binary(name: str) -> str | None:
    """``$NETAGG_P4_PREFIX/bin/<name>`` if it exists, else ``name`` on PATH, else None."""
    prefix = os.environ.get(PREFIX_ENV)
    if prefix:
        candidate = Path(prefix) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def _site_dirs(prefix: Path) -> list[str]:
    """Where a BMv2 installed into ``prefix`` put its Python modules."""
    lib = prefix / "lib"
    return [
        str(p)
        for pattern in ("python3*/site-packages", "python3*/dist-packages")
        for p in sorted(lib.glob(pattern))
    ]


def _is_python_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def cli_command(cli: str, thrift_port: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``simple_switch_CLI`` (at ``cli``) against the
    runtime on ``thrift_port``: with this interpreter and the install prefix's site-packages first on
    PYTHONPATH (the prefix is $NETAGG_P4_PREFIX, or the folder above the script's ``bin/``). Raises
    :class:`Bmv2Error` naming the ``bmv2`` extra if this interpreter has no ``thrift``."""
    env = dict(os.environ)
    prefixes = [Path(cli).parent.parent]
    if os.environ.get(PREFIX_ENV):
        prefixes.insert(0, Path(os.environ[PREFIX_ENV]))
    extra = list(dict.fromkeys(d for p in prefixes for d in _site_dirs(p)))
    if extra:
        env["PYTHONPATH"] = os.pathsep.join([*extra, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if not _is_python_script(cli):
        return [cli, "--thrift-port", str(thrift_port)], env  # a wrapper: it picks its own Python
    if importlib.util.find_spec("thrift") is None:
        raise Bmv2Error(
            f"simple_switch_CLI needs the thrift module in netagg's Python ({sys.executable}): {THRIFT_HINT}"
        )
    return [sys.executable, cli, "--thrift-port", str(thrift_port)], env


def p4_constants(config: Path | None = None) -> dict[str, int]:
    """The ``#define NAME number`` lines of p4/include/config.p4."""
    text = (config or P4_DIR / "include" / "config.p4").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"^#define\s+(\w+)\s+(\d+)\s*$", text, re.M)}


class Bmv2Process:
    """``simple_switch`` as a child process.

    Args:
        json_path: the compiled program (``make p4`` writes build/p4/netagg.json).
        interfaces: BMv2 port number -> Linux interface.
        thrift_port: the runtime's TCP port (default: a free one).
        log_file: where simple_switch logs (default: nowhere; its logging costs throughput).
        log_level: simple_switch's ``--log-level``. Default: ``"trace"`` with a log file, else
            ``"off"``. simple_switch's own default is ``"trace"``, and on a BMv2 built with its
            logging macros (the default configure) it then formats every trace message of every
            packet even with no log to write: about half of its time (bench/bmv2.py).
        ready_timeout: seconds to wait for the runtime to answer.
    """

    def __init__(
        self,
        json_path: Path,
        interfaces: Mapping[int, str],
        *,
        thrift_port: int | None = None,
        log_file: Path | None = None,
        log_level: str | None = None,
        ready_timeout: float = 30.0,
        device_id: int = 0,
    ) -> None:
        if log_level is None:
            log_level = "off" if log_file is None else "trace"
        if log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}")
        binary = find_binary("simple_switch")
        self._cli = find_binary("simple_switch_CLI")
        if binary is None or self._cli is None:
            raise Bmv2Error(
                f"simple_switch and simple_switch_CLI are needed (on PATH or in ${PREFIX_ENV}/bin)"
            )
        cli_command(self._cli, 0)  # no thrift for simple_switch_CLI: say so before starting anything
        if not Path(json_path).is_file():
            raise Bmv2Error(f"{json_path} does not exist (run `make p4`)")
        if thrift_port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                thrift_port = int(s.getsockname()[1])
        self.thrift_port = thrift_port
        self.json_path = Path(json_path)
        cmd = [binary, "--device-id", str(device_id), "--thrift-port", str(thrift_port)]
        for port, iface in sorted(interfaces.items()):
            cmd += ["-i", f"{port}@{iface}"]
        cmd += ["--log-level", log_level]
        if log_file is not None:
            cmd += ["--log-file", str(log_file), "--log-flush"]
        cmd.append(str(json_path))
        self._stderr = open(os.devnull, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self._lock = threading.Lock()
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise Bmv2Error(f"simple_switch exited with {self.proc.returncode}: {err.strip()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.thrift_port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            self.cli(["show_ports"])  # the runtime answers commands: ready
            return
        raise Bmv2Error(
            f"simple_switch's runtime did not answer on port {self.thrift_port} within {timeout}s"
        )

    def cli(self, commands: Sequence[str], *, check: bool = True) -> list[str]:
        """Run runtime commands in one ``simple_switch_CLI`` session; returns each command's output.
        Raises :class:`Bmv2Error` naming the command if one failed (unless ``check`` is false)."""
        assert self._cli is not None
        cmd, env = cli_command(self._cli, self.thrift_port)
        with self._lock:
            r = subprocess.run(
                cmd,
                input="\n".join(commands) + "\n",
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )
        if r.returncode != 0 and not r.stdout:
            hint = f" ({THRIFT_HINT})" if "No module named 'thrift'" in r.stderr else ""
            raise Bmv2Error(f"simple_switch_CLI failed{hint}: {r.stderr.strip()[-2000:]}")
        # The CLI prints a prompt before each command's output; the first chunk is its banner.
        outputs = r.stdout.split("RuntimeCmd:")[1 : len(commands) + 1]
        if check:
            for command, out in zip(commands, outputs, strict=False):
                if re.search(r"^\s*(Error|Invalid|Exception)", out, re.M) or "Traceback" in out:
                    raise Bmv2Error(f"`{command}` failed: {out.strip()}")
        return outputs

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self._stderr.close()

    def __enter__(self) -> Bmv2Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def compile_p4(source: Path, out_dir: Path, *, elements: int | None = None) -> Path:
    """Compile a P4 program with p4c-bm2-ss into ``out_dir`` (JSON and P4Info) unless the JSON there is
    newer than every source under p4/ (as `make p4` would); returns the JSON path."""
    json_path = out_dir / (source.stem + ".json")
    sources = [*P4_DIR.rglob("*.p4"), source]
    fresh = json_path.exists() and json_path.stat().st_mtime > max(s.stat().st_mtime for s in sources)
    if elements is None and fresh:
        return json_path
    p4c = find_binary("p4c-bm2-ss")
    if p4c is None:
        raise Bmv2Error(f"p4c-bm2-ss is needed (on PATH or in ${PREFIX_ENV}/bin)")
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        p4c,
        "--std",
        "p4-16",
        "-o",
        str(json_path),
        "--p4runtime-files",
        str(out_dir / (source.stem + ".p4info.txt")),
    ]
    if elements is not None:
        cmd += [f"-DNETAGG_ELEMENTS={elements}"]
    r = subprocess.run([*cmd, str(source)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise Bmv2Error(f"p4c-bm2-ss failed on {source}:\n{r.stderr.strip()}")
    return json_path
