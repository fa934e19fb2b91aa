"""Where the ``netagg`` torch.distributed backend finds its switch: the environment, read once per group.

No torch and no sockets here: :func:`config_from_env` turns the variables into the arguments of a
:class:`host_agent.Worker`, or raises :class:`ValueError` saying what to set.

=====================  ==================================================================================
``NETAGG_SWITCH``      ``HOST:PORT`` of the switch serving a static job (``netagg switch --workers W``).
``NETAGG_CONTROLLER``  instead, the controller's ``HOST:PORT``; the job is then ``NETAGG_JOB=j-...``.
``NETAGG_JOB``         the job: an int id at the switch (default 1), or the controller's ``j-...`` id.
``NETAGG_TOKEN``       the controller's bearer token.
``NETAGG_KEY``         the job's key (16 hex digits) for a static job with one (the controller hands
                       its job's key out itself).
``NETAGG_TLS_CA``      CA certificate (PEM) to reach the controller over TLS.
``NETAGG_TIMEOUT``     seconds a collective may make no progress before it fails (default 10).
=====================  ==================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from netagg.protocol import parse_address, parse_key

__all__ = ["ENV_VARS", "BackendConfig", "config_from_env"]

ENV_VARS = (
    "NETAGG_SWITCH",
    "NETAGG_CONTROLLER",
    "NETAGG_JOB",
    "NETAGG_TOKEN",
    "NETAGG_KEY",
    "NETAGG_TLS_CA",
    "NETAGG_TIMEOUT",
)

_NEITHER = (
    "the netagg backend needs its switch: set NETAGG_SWITCH=HOST:PORT (a static job, `netagg switch "
    "--workers W`; NETAGG_JOB=<int> if it is not job 1), or NETAGG_CONTROLLER=HOST:PORT with "
    "NETAGG_JOB=j-... and NETAGG_TOKEN (a job created with `netagg ctl create`)"
)


@dataclass(frozen=True)
class BackendConfig:
    """One group's way to its switch, from the environment."""

    switch: str | None
    """The switch's ``HOST:PORT`` for a static job, else None."""
    controller: str | None
    """The controller's ``HOST:PORT``, else None (exactly one of ``switch`` and ``controller`` is set)."""
    job: int | str
    """The switch's int job id, or the controller's ``j-...`` job id."""
    token: str | None = None
    """Bearer token for the controller."""
    key: int | None = None
    """The job's key, None for the worker's own default (``NETAGG_KEY``, else none)."""
    tls_ca: str | None = None
    """CA certificate to reach the controller over TLS."""
    timeout: float = 10.0
    """Seconds without progress before a collective fails (:class:`host_agent.NetAggTimeout`)."""

    def worker_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`host_agent.Worker` (besides rank, world size, timeouts)."""
        kwargs: dict[str, Any] = {"job": self.job, "key": self.key, "timeout": self.timeout}
        if self.controller is not None:
            kwargs.update(controller=self.controller, token=self.token, tls_ca=self.tls_ca)
        else:
            kwargs["switch"] = self.switch
        return kwargs

    def describe(self) -> str:
        """Where the group's collectives go, for logs and errors."""
        if self.controller is not None:
            return f"job {self.job} of the controller at {self.controller}"
        return f"job {self.job} at the switch {self.switch}"


def config_from_env(env: Mapping[str, str]) -> BackendConfig:
    """Read the ``NETAGG_*`` variables (see the module's docstring); ValueError says what is wrong."""
    switch = env.get("NETAGG_SWITCH") or None
    controller = env.get("NETAGG_CONTROLLER") or None
    job_text = (env.get("NETAGG_JOB") or "").strip()
    if switch is None and controller is None:
        raise ValueError(_NEITHER)
    if switch is not None and controller is not None:
        raise ValueError(
            "set only one of NETAGG_SWITCH (a static job) and NETAGG_CONTROLLER (a controller's job), "
            f"not both (NETAGG_SWITCH={switch!r}, NETAGG_CONTROLLER={controller!r})"
        )
    for name, address in (("NETAGG_SWITCH", switch), ("NETAGG_CONTROLLER", controller)):
        if address is not None:
            try:
                _, port = parse_address(address)
            except ValueError as exc:
                raise ValueError(f"{name}={address!r} is not HOST:PORT ({exc})") from None
            if port == 0:
                raise ValueError(f"{name}={address!r} needs a port (HOST:PORT)")
    job: int | str
    if controller is not None:
        if not job_text.startswith("j-"):
            raise ValueError(
                "with NETAGG_CONTROLLER, set NETAGG_JOB to the controller's job id (j-..., from "
                f"`netagg ctl create`), not {job_text!r}"
            )
        job = job_text
    else:
        try:
            job = int(job_text or "1")
        except ValueError:
            raise ValueError(
                f"with NETAGG_SWITCH, NETAGG_JOB is the switch's int job id (default 1), not {job_text!r}"
            ) from None
        if not 0 <= job < 1 << 16:
            raise ValueError(f"NETAGG_JOB={job} is not a job id (0-65535)")
    key_text = (env.get("NETAGG_KEY") or "").strip()
    try:
        key = parse_key(key_text) if key_text else None
    except ValueError as exc:
        raise ValueError(f"NETAGG_KEY: {exc}") from None
    timeout_text = (env.get("NETAGG_TIMEOUT") or "").strip()
    try:
        timeout = float(timeout_text) if timeout_text else 10.0
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ValueError(f"NETAGG_TIMEOUT is seconds (> 0), not {timeout_text!r}")
    return BackendConfig(
        switch=switch,
        controller=controller,
        job=job,
        token=env.get("NETAGG_TOKEN") or None,
        key=key,
        tls_ca=env.get("NETAGG_TLS_CA") or None,
        timeout=timeout,
    )
