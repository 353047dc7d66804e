"""Both simulators on one clock, and the daemon settings that point at them.

Used by the tests' fixtures, the ``demo`` command, ``simulate`` and the
benchmarks, so all four exercise the same wiring.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.simulators.clock import SimClock
from daemon.simulators.ivanti import IvantiSimulator
from daemon.simulators.profiles import profile as named_profile
from daemon.simulators.xmatters import XMattersSimulator

IVANTI_API_KEY = "SIMKEY0000000000000000000000AAAA"
IVANTI_KEY_USER = "xmapi"


class SimPair:
    """An Ivanti and an xMatters simulator sharing one controllable clock."""

    def __init__(
        self,
        *,
        clock: SimClock | None = None,
        quirks: bool = True,
        flood_control: bool = True,
        log_requests: bool = False,
        ivanti_kwargs: Mapping[str, Any] | None = None,
        xmatters_kwargs: Mapping[str, Any] | None = None,
        profile: str = "default",
    ) -> None:
        """``profile`` names a set of switches (``daemon.simulators.profiles``); explicit
        ``ivanti_kwargs`` / ``xmatters_kwargs`` win over it."""
        self.clock = clock or SimClock(frozen=True)
        chosen = named_profile(profile)
        self.profile = chosen.name
        ikw: dict[str, Any] = {"api_keys": {IVANTI_API_KEY: IVANTI_KEY_USER}}
        ikw.update(chosen.ivanti)
        ikw.update(ivanti_kwargs or {})
        xkw: dict[str, Any] = dict(chosen.xmatters)
        xkw.update(xmatters_kwargs or {})
        self.ivanti = IvantiSimulator(
            clock=self.clock, quirks=quirks, log_requests=log_requests, **ikw
        )
        self.xmatters = XMattersSimulator(
            self.clock,
            flood_control=flood_control,
            log_requests=log_requests,
            **xkw,
        )

    def start(
        self, host: str = "127.0.0.1", ivanti_port: int = 0, xmatters_port: int = 0
    ) -> SimPair:
        self.ivanti.start(host, ivanti_port)
        try:
            self.xmatters.start(host, xmatters_port)
        except BaseException:
            self.ivanti.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self.xmatters.stop()
        finally:
            self.ivanti.stop()

    def __enter__(self) -> SimPair:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def settle(self) -> float:
        """Let the sim clock run until every pending asynchronous xMatters flow has run,
        as when a person looks a little later; returns the seconds it moved (0: none)."""
        wait = self.xmatters.flows_due_in()
        if wait > 0:
            self.clock.advance(wait)
            self.xmatters.flows_due_in()  # runs them now, not at the next request
        return wait

    def daemon_env(
        self,
        state_db: str | Path,
        *,
        mode: str = "workflow",
        ivanti_auth: str = "apikey",
        xmatters_auth: str = "basic",
        **overrides: str,
    ) -> dict[str, str]:
        """Environment variables that configure the daemon for these simulators."""
        xm = self.xmatters
        db = str(state_db)
        env = {
            "IVANTI_BASE_URL": self.ivanti.url,
            "XMATTERS_BASE_URL": xm.url,
            "XMATTERS_TRIGGER_URL": xm.trigger_url,
            "XMATTERS_FORM_TRIGGER_URL": xm.form_trigger_url,
            "XMATTERS_MODE": mode,
            "XMATTERS_RESPONSES_USER": ";".join(o["id"] for o in xm.user_response_options),
            "XMATTERS_RESPONSES_GROUP": ";".join(o["id"] for o in xm.group_response_options),
            "IXM_STATE_DB": db if "://" in db else f"sqlite:///{db}",
            "IXM_LOG_LEVEL": "WARNING",
        }
        if ivanti_auth == "apikey":
            env["IVANTI_API_KEY"] = IVANTI_API_KEY
        else:
            user, (password, _roles) = next(iter(self.ivanti.users.items()))
            env.update(
                {
                    "IVANTI_USERNAME": user,
                    "IVANTI_PASSWORD": password,
                    "IVANTI_ROLE": "Admin",
                    "IVANTI_TENANT": self.ivanti.tenant,
                }
            )
        login, password = next(iter(xm.users.items()))
        if xmatters_auth == "apikey":
            key, secret = next(iter(xm.api_keys.items()))
            env.update({"XMATTERS_API_KEY": key, "XMATTERS_API_SECRET": secret})
        else:
            env.update({"XMATTERS_USERNAME": login, "XMATTERS_PASSWORD": password})
            if xmatters_auth == "oauth":
                env["XMATTERS_OAUTH_CLIENT_ID"] = next(iter(sorted(xm.oauth_clients)))
        env.update(overrides)
        return env
