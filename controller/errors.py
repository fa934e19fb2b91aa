"""The controller's errors: each carries the gRPC status code an RPC answers it with.

Placement, request checks and the agent pool raise these; the servicer turns them into
``context.abort(code, message)`` in one place (:func:`controller.service.answering`). The message is for
a person: it says what was wrong and what to do.

Example::

    try:
        placement = place(spec, switches, used)
    except ControlError as exc:
        print(exc.code.name, exc)  # RESOURCE_EXHAUSTED no switch can take ...
"""

from __future__ import annotations

from typing import ClassVar

import grpc

__all__ = [
    "AlreadyExistsError",
    "ControlError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnavailableError",
]


class ControlError(Exception):
    """A request the controller refuses; ``code`` is the gRPC status it answers with."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(ControlError):
    """The request itself is wrong (a field out of range, a malformed id or address)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(ControlError):
    """The request names a job that is not there."""

    code = grpc.StatusCode.NOT_FOUND


class PermissionDeniedError(ControlError):
    """The caller's tenant may not do this (another tenant's job; registering without an admin token)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class AlreadyExistsError(ControlError):
    """Another caller holds what this one asks for (a rank joined from another address)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(ControlError):
    """The request is fine but the fabric cannot serve it (no switch registered, none takes its size)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(ControlError):
    """A switch could take the job but has no room now (slots, wire job ids): delete a job or wait."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(ControlError):
    """A switch the request needs did not answer or refused to be programmed."""

    code = grpc.StatusCode.UNAVAILABLE
