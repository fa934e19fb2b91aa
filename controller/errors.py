"""The controller's one error type: a refusal carrying the gRPC status code an RPC answers it with.

Placement, request checks and the agent pool raise it; the servicer turns it into
``context.abort(code, message)`` in one place (:func:`controller.service.answering`). The message is for
a person: it says what was wrong and what to do. The codes follow proto/netagg/v1/control.proto:
INVALID_ARGUMENT (a field out of range), NOT_FOUND (no such job), PERMISSION_DENIED (another tenant's
job), ALREADY_EXISTS (a rank joined from elsewhere), FAILED_PRECONDITION (no switch could ever take the
job), RESOURCE_EXHAUSTED (one could, but has no room now), UNAVAILABLE (a switch did not answer or
refused to be programmed).

Example::

    try:
        placement = place(spec, switches, used)
    except ControlError as exc:
        print(exc.code.name, exc)  # RESOURCE_EXHAUSTED no switch can take ...
"""

from __future__ import annotations

import grpc

__all__ = ["ControlError"]


class ControlError(Exception):
    """A request the controller refuses: ``code`` is the gRPC status to answer with, ``str(self)`` the
    message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
