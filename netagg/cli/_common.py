"""What the subcommands share: the parser class, argument types, the auth flags, tokens, signals, and
the machine-readable line a serving subcommand prints once it is ready."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from netagg.rpc import Tokens

TOKEN_ENV = "NETAGG_TOKEN"  # = netagg.rpc.TOKEN_ENV (not imported: it pulls in grpc)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (and exit status 2), and prints each subcommand's
    examples (its epilog) as written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _address(text: str) -> tuple[str, int]:
    from netagg.protocol import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_range(lo: int, hi: int) -> argparse._ActionType:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside [{lo}, {hi}]")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in [0, 1)")
    return value


def _listen_flag(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument(
        "--listen",
        type=_address,
        default=("127.0.0.1", port),
        metavar="HOST:PORT",
        help=f"address to serve on (default 127.0.0.1:{port})",
    )


def _auth_flags(p: argparse.ArgumentParser, *, server: bool) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")
    g.add_argument(
        "--token-file",
        type=Path,
        help="file of tokens, one `TOKEN TENANT [admin]` a line (a client uses the first)",
    )
    if server:
        p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS with this certificate")
        p.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    p.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        help="connect to the controller over TLS, trusting this CA certificate",
    )


def _ready_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="once serving, write the ready line (JSON) to this file instead of stdout",
    )


def _verbose_flag(p: argparse.ArgumentParser, what: str) -> None:
    """``-v``/``-vv`` after the subcommand too (``netagg switch -v``), adding to ``netagg -v``."""
    p.add_argument(
        "-v",
        "--verbose",
        dest="verbose_here",
        action="count",
        default=0,
        help=f"log {what} at INFO, with time, logger and level, on stderr; -vv: DEBUG as well",
    )


def _apply_verbose(args: argparse.Namespace) -> None:
    """Lower the root logger's level for ``-v`` given after the subcommand (main() has set the format
    and the level of ``netagg -v``)."""
    count = getattr(args, "verbose", 0) + getattr(args, "verbose_here", 0)
    if count:
        logging.getLogger().setLevel(logging.WARNING - 10 * min(count, 2))


def _metrics_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--metrics",
        type=_address,
        metavar="HOST:PORT",
        help=f"serve Prometheus metrics at http://HOST:PORT/metrics (port 0: a free one; the ready line "
        f"says which): {what}",
    )


def _ready(args: argparse.Namespace, role: str, banner: str, **fields: object) -> None:
    """Say that this process serves: ``banner`` for people on stderr, and one JSON object for programs
    (``{"event": "ready", "role": ..., <fields>, "pid": ...}``) as a line on stdout, or written
    whole to ``--ready-file`` (a watcher never sees half of it)."""
    print(banner, file=sys.stderr, flush=True)
    line = json.dumps({"event": "ready", "role": role, **fields, "pid": os.getpid()})
    path: Path | None = getattr(args, "ready_file", None)
    if path is None:
        print(line, flush=True)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(line + "\n")
    tmp.replace(path)


def _server_tokens(args: argparse.Namespace) -> Tokens | None:
    from netagg.rpc import Tokens

    if args.token:
        return Tokens.single(args.token)
    if args.token_file:
        return Tokens.from_file(args.token_file)
    if os.environ.get(TOKEN_ENV):
        return Tokens.single(os.environ[TOKEN_ENV])
    return None


def read_key_file(path: Path) -> int:
    """The job key in ``path`` (16 hex digits, surrounding whitespace allowed); ValueError saying what
    is wrong with the file, in one line."""
    from netagg.protocol import parse_key

    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"--key-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--key-file {path}: not text (expected 16 hex digits)") from None
    try:
        key = parse_key(text)
    except ValueError as exc:
        raise ValueError(f"--key-file {path}: {exc}") from None
    if key == 0:
        raise ValueError(f"--key-file {path}: the key is 0, which means no key")
    return key
