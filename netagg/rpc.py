"""gRPC plumbing shared by the controller, the switch agents and their clients.

Bearer tokens, TLS, standard health checking and server reflection, in one place:

- :class:`Tokens` maps tokens to tenants (``--token`` / ``--token-file``); :class:`AuthInterceptor`
  answers UNAUTHENTICATED to any call without a valid ``authorization: Bearer <token>`` header, except
  health checking and reflection, which stay open (probes and grpcurl need no secret).
- :func:`make_server` builds a server with those on, plain or TLS.
- :func:`channel` opens a client channel that sends the token with every call.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

__all__ = [
    "OPEN_SERVICES",
    "TOKEN_ENV",
    "AuthInterceptor",
    "Tenant",
    "Tokens",
    "channel",
    "make_server",
    "read_token",
    "tenant_of",
]

#: Environment variable clients read a token from when none is given.
TOKEN_ENV = "NETAGG_TOKEN"
#: Services any caller may use without a token.
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


@dataclass(frozen=True)
class Tenant:
    """Who a token belongs to."""

    name: str
    """The tenant's name; jobs are owned by it."""
    admin: bool = False
    """Admin tokens may act on every job and register switches."""


class Tokens:
    """The tokens a server accepts, each with its tenant. Compared in constant time."""

    def __init__(self, entries: Iterable[tuple[str, Tenant]]) -> None:
        self._entries = [(t.encode(), tenant) for t, tenant in entries]
        if not self._entries:
            raise ValueError("no tokens: a server needs at least one")
        for token, _ in self._entries:
            if len(token) < 16:
                raise ValueError("a token must be at least 16 characters (use e.g. `openssl rand -hex 16`)")

    @classmethod
    def single(cls, token: str) -> Tokens:
        """One admin token (``--token``)."""
        return cls([(token, Tenant("admin", admin=True))])

    @classmethod
    def from_file(cls, path: str | Path) -> Tokens:
        """A token file: one ``TOKEN TENANT [admin]`` per line; ``#`` starts a comment. A line with only a
        token is an admin token of tenant ``admin``."""
        entries = []
        for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) == 1:
                entries.append((words[0], Tenant("admin", admin=True)))
            elif len(words) == 2 or (len(words) == 3 and words[2] == "admin"):
                entries.append((words[0], Tenant(words[1], admin=len(words) == 3)))
            else:
                raise ValueError(f"{path}:{lineno}: expected `TOKEN TENANT [admin]`, got {len(words)} words")
        return cls(entries)

    def lookup(self, token: str) -> Tenant | None:
        given = token.encode()
        found = None
        for known, tenant in self._entries:  # no early exit: the time does not tell which matched
            if hmac.compare_digest(known, given):
                found = tenant
        return found


def generate_token_file(path: Path) -> str:
    """Write a fresh random admin token to ``path`` (mode 0600) and return it."""
    token = secrets.token_hex(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        f.write(f"{token} admin admin\n")
    return token


def read_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """A client's token: ``token``, else the first token of ``token_file``, else $NETAGG_TOKEN."""
    if token:
        return token
    if token_file:
        for raw in Path(token_file).read_text().splitlines():
            words = raw.split("#", 1)[0].split()
            if words:
                return words[0]
        raise ValueError(f"{token_file}: no token in it")
    return os.environ.get(TOKEN_ENV) or None


def _bearer(metadata: Iterable[tuple[str, Any]]) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def tenant_of(context: grpc.ServicerContext, tokens: Tokens) -> Tenant:
    """The caller's tenant (the interceptor has already refused calls without a valid token)."""
    token = _bearer(context.invocation_metadata() or ())
    tenant = tokens.lookup(token) if token else None
    if tenant is None:  # only if a servicer runs without the interceptor
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
    return tenant  # type: ignore[return-value]


class AuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for any call (but health and reflection) without a known bearer token."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        service = details.method.lstrip("/").split("/", 1)[0]
        if handler is None or service in OPEN_SERVICES:
            return handler
        token = _bearer(details.invocation_metadata or ())
        if token is None:
            return _deny(handler, "no bearer token: send metadata `authorization: Bearer <token>`")
        if self.tokens.lookup(token) is None:
            return _deny(handler, "the bearer token is not valid for this server")
        return handler


def _deny(handler: Any, message: str) -> Any:
    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    return grpc.stream_stream_rpc_method_handler(abort, **kwargs)


def make_server(
    address: str,
    tokens: Tokens,
    add_services: Sequence[Callable[[grpc.Server], None]],
    service_names: Sequence[str],
    *,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    max_workers: int = 8,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A started server on ``address`` with the services, token checks, health and reflection.

    ``service_names`` are the full names of the services (``netagg.v1.Controller``); each is reported
    SERVING by the health service, as is the server as a whole (""). TLS when ``tls_cert`` and
    ``tls_key`` (PEM files) are given. Returns (server, bound port, health servicer).
    """
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both a certificate and its key")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=[AuthInterceptor(tokens)]
    )
    for add in add_services:
        add(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *service_names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    if tls_cert is not None and tls_key is not None:
        creds = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port, health_servicer


class _TokenHeader(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call (works on plain and TLS channels)."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self.header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def channel(address: str, token: str | None, *, tls_ca: str | Path | None = None) -> grpc.Channel:
    """A client channel to ``address`` that sends ``token`` with every call; TLS if ``tls_ca`` (the PEM
    of the CA that signed the server's certificate) is given."""
    if tls_ca is not None:
        ch = grpc.secure_channel(address, grpc.ssl_channel_credentials(Path(tls_ca).read_bytes()))
    else:
        ch = grpc.insecure_channel(address)
    if token:
        ch = grpc.intercept_channel(ch, _TokenHeader(token))
    return ch
