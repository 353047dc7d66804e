"""``ivanti-xmatters check``: the configuration validated and both APIs called, read-only
(nothing is created: a trigger is never POSTed); each failure carries its fix."""

from __future__ import annotations

import argparse
import re
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx

from daemon.config import EX_CONFIG, ConfigError, Settings
from daemon.errors import ApiError, AuthError, parse_http_date
from daemon.ops import render
from daemon.ops.command import subparser
from daemon.ops.render import dump, pairs, span
from daemon.ops.state_db import shown_url
from daemon.settings_load import load
from daemon.store import current_revision, head_revision, make_engine, sqlite_file

MAX_SKEW_S = 60.0
TRIGGER_PATH = re.compile(r"/api/integration/1/functions/[0-9A-Fa-f-]{36}/triggers/?$")


Status = Literal["OK", "FAIL", "SKIP"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message}


def _skew(name: str, server: str, date: datetime | None, now: datetime) -> CheckResult:
    if date is None:
        return CheckResult(name, "SKIP", f"{server} sent no Date header; clock skew not checked")
    skew = (now - date).total_seconds()
    if abs(skew) <= MAX_SKEW_S:
        return CheckResult(name, "OK", f"local clock within {span(skew)} of {server} (Date header)")
    side = "ahead of" if skew > 0 else "behind"
    return CheckResult(
        name,
        "FAIL",
        f"local clock is {span(skew)} {side} {server} (its Date header; limit "
        f"{int(MAX_SKEW_S)}s): "
        "sync it with NTP (e.g. `timedatectl set-ntp true`); ages, retry backoff and the "
        "write-back window use the local clock",
    )


def _reach_fix(what: str, var: str, exc: ApiError) -> str:
    return f"cannot reach {what} ({exc.detail}): check {var}, DNS, proxy and firewall"


def _ivanti_fix(exc: ApiError, settings: Settings) -> str:
    iv = settings.ivanti
    assert iv is not None
    status = exc.status
    code = f" {exc.code}" if exc.code else ""
    if isinstance(exc, AuthError):
        if iv.auth == "apikey":
            return (
                f"IVANTI_API_KEY was rejected ({status or 401}{code}): check the key is "
                "activated (Configuration console > Security Controls > API Keys), belongs to "
                f"this tenant ({iv.tenant}) and its role may read incidents"
            )
        return (
            f"Ivanti refused the login ({status}{code}): check IVANTI_TENANT is the tenant "
            f"host (now {iv.tenant!r}, e.g. acme.saasit.com), IVANTI_USERNAME/IVANTI_PASSWORD, "
            f"and IVANTI_ROLE is the role's internal name, e.g. Admin not Administrator "
            f"(now {iv.role!r})"
        )
    if status is None:
        return _reach_fix(f"Ivanti at {iv.base_url}", "IVANTI_BASE_URL", exc)
    if status == 404:
        return (
            f"IVANTI_BASE_URL answered 404{code} for the incidents feed: check the URL "
            "(on-premises installs need the /HEAT prefix)"
        )
    if status in (400, 403):
        who = "the API key's role" if iv.auth == "apikey" else f"IVANTI_ROLE={iv.role}"
        return (
            f"Ivanti refused to list incidents ({status}{code}: {exc.detail}): {who} may "
            "lack the right to read incidents"
        )
    if status >= 500:
        return (
            f"Ivanti answered {status}{code} ({exc.detail}): a server-side problem; try again later"
        )
    return str(exc)


def check_ivanti(
    settings: Settings, now: Callable[[], datetime], transport: httpx.BaseTransport | None
) -> list[CheckResult]:
    from daemon.service import build_ivanti

    iv = settings.ivanti
    assert iv is not None
    who = "the API key" if iv.auth == "apikey" else f"user {iv.username} (role {iv.role})"
    try:
        client = build_ivanti(settings, **({"transport": transport} if transport else {}))
    except ValueError as exc:
        return [CheckResult("ivanti", "FAIL", f"cannot set up the Ivanti client: {exc}")]
    results: list[CheckResult] = []
    try:
        try:
            page = client.query_incidents("IncidentNumber gt 0", "IncidentNumber asc", top=1)
        except ApiError as exc:
            return [CheckResult("ivanti", "FAIL", _ivanti_fix(exc, settings))]
        message = f"{iv.base_url}: incidents readable with {who}"
        if not page.rows:
            message += (
                "; but none is visible: if the tenant has incidents, this role cannot read them"
            )
        results.append(CheckResult("ivanti", "OK", message))
        if iv.scope_filter:
            results.append(_check_scope(client, iv.scope_filter))
        results.append(_check_paging(client, settings.poll.paging))
        results.append(_skew("ivanti clock", "Ivanti", client.last_server_date, now()))
    finally:
        try:
            client.close()
        except Exception:
            pass
    return results


def _check_scope(client: Any, scope: str) -> CheckResult:
    try:
        page = client.query_incidents(
            f"({scope}) and IncidentNumber gt 0", "IncidentNumber asc", top=1
        )
    except ApiError as exc:
        return CheckResult(
            "ivanti scope",
            "FAIL",
            f"IVANTI_SCOPE_FILTER was refused ({exc.status}: {exc.detail}): check its field "
            "names and quoting, e.g. OwnerTeam eq 'Network Operations'",
        )
    found = "matches incidents" if page.rows else "matches no incident right now"
    return CheckResult("ivanti scope", "OK", f"IVANTI_SCOPE_FILTER accepted; it {found}")


def _check_paging(client: Any, paging: str) -> CheckResult:
    """Probe, on a sample, the two things IXM_PAGING=keyset assumes and the reference
    leaves open: that Ivanti stores whole seconds (the rows served in one second all
    match ``LastModDateTime eq`` that second), and that it sorts RecIds in the text
    order ``RecId gt`` compares in. A sample can refute them, never prove them."""
    from datetime import timedelta

    from daemon.ivanti import odata_quote
    from daemon.timeutil import odata_datetime_literal, parse_ivanti_datetime

    def rows(flt: str, orderby: str, top: int = 100) -> list[Mapping[str, Any]]:
        return list(client.query_incidents(flt, orderby, top=top).rows)

    problems: list[str] = []
    try:
        seconds: list[datetime] = []
        for row in rows("IncidentNumber gt 0", "LastModDateTime desc", 20):
            try:
                stamp = parse_ivanti_datetime(row.get("LastModDateTime"))
            except ValueError:
                continue
            if stamp is not None and stamp.replace(microsecond=0) not in seconds:
                seconds.append(stamp.replace(microsecond=0))
        for second in seconds[:3]:
            lo = odata_datetime_literal(second)
            hi = odata_datetime_literal(second + timedelta(seconds=1))
            wide = rows(f"LastModDateTime ge {lo} and LastModDateTime lt {hi}", "RecId asc")
            exact = rows(f"LastModDateTime eq {lo}", "RecId asc")
            if len(exact) < len(wide):
                problems.append(
                    "it keeps sub-seconds it serves as whole seconds "
                    f"({len(wide) - len(exact)} of {len(wide)} rows of {lo} do not equal it)"
                )
                break
        ids = [
            str(r["RecId"]).upper()
            for r in rows("IncidentNumber gt 0", "RecId asc", 50)
            if isinstance(r.get("RecId"), str)
        ]
        if ids != sorted(ids):
            problems.append("it sorts RecIds in another order than the text order it compares in")
        elif len(ids) >= 2:
            pivot = ids[len(ids) // 2 - 1]
            after = [
                str(r.get("RecId", "")).upper()
                for r in rows(f"RecId gt {odata_quote(pivot)}", "RecId asc", 100)
            ]
            if after[: len(ids) - len(ids) // 2] != ids[len(ids) // 2 :]:
                problems.append("its 'RecId gt' does not follow the order it sorts RecIds in")
    except ApiError as exc:
        return CheckResult("ivanti paging", "SKIP", f"could not probe paging ({exc.detail})")
    if not seconds:
        return CheckResult("ivanti paging", "SKIP", "no incident visible to probe paging on")
    if problems:
        found = "; ".join(problems)
        if paging == "keyset":
            return CheckResult(
                "ivanti paging",
                "FAIL",
                f"IXM_PAGING=keyset loses rows on this tenant: {found}; set IXM_PAGING=safe "
                "(the default)",
            )
        return CheckResult("ivanti paging", "OK", f"IXM_PAGING=safe, as this tenant needs: {found}")
    tail = (
        ""
        if paging == "keyset"
        else "; IXM_PAGING=keyset would hold here too (a sample is no proof)"
    )
    return CheckResult(
        "ivanti paging",
        "OK",
        f"IXM_PAGING={paging}; on a sample this tenant stores whole seconds and compares "
        f"RecIds as it sorts them{tail}",
    )


def _xmatters_fix(exc: ApiError, settings: Settings) -> str:
    xm = settings.xmatters
    assert xm is not None
    status, code = exc.status, f" {exc.code}" if exc.code else ""
    if isinstance(exc, AuthError):
        if xm.auth == "oauth":
            return (
                f"the xMatters OAuth login was refused ({status}{code}): check "
                "XMATTERS_OAUTH_CLIENT_ID and that XMATTERS_PASSWORD is a native xMatters password"
            )
        names = (
            "XMATTERS_API_KEY/XMATTERS_API_SECRET"
            if xm.auth == "apikey"
            else "XMATTERS_USERNAME/XMATTERS_PASSWORD"
        )
        return (
            f"{names} were rejected ({status or 401}{code}): check them (a native xMatters "
            "password, not SSO) and that the user has the REST Web Service User role"
        )
    if status is None:
        return _reach_fix(f"xMatters at {xm.base_url}", "XMATTERS_BASE_URL", exc)
    if status == 403:
        return (
            f"the xMatters user may not read events (403{code}): give it the REST Web "
            "Service User role"
        )
    if status == 404:
        return (
            "XMATTERS_BASE_URL answered 404 for /api/xm/1/events: it must be the instance "
            "root, e.g. https://acme.xmatters.com"
        )
    return str(exc)


def check_xmatters_rest(settings: Settings, transport: httpx.BaseTransport | None) -> CheckResult:
    """Reads events by a random requestId: the permission the daemon needs, one empty page.

    (``find_events(statuses=["ACTIVE"], limit=1)`` would follow ``links.next`` through
    every active event, one request each; ``get_person`` needs a person's name, which an
    API key is not.)
    """
    from daemon.service import build_xmatters

    xm = settings.xmatters
    assert xm is not None
    if not xm.rest_enabled:
        return CheckResult(
            "xmatters REST",
            "SKIP",
            "XMATTERS_BASE_URL is not set: trigger-only set-up (no write-back, no REST "
            "terminate). Nothing can be looked up in xMatters, so a page whose trigger timed "
            "out or got a 5xx is sent again unchecked: this set-up may page twice after a "
            "timeout (set XMATTERS_BASE_URL and REST credentials to have it checked)",
        )
    try:
        client = build_xmatters(settings, **({"transport": transport} if transport else {}))
    except ValueError as exc:
        return CheckResult("xmatters REST", "FAIL", f"cannot set up the xMatters client: {exc}")
    try:
        client.find_events(request_id=str(uuid.uuid4()), limit=1)
    except ApiError as exc:
        return CheckResult("xmatters REST", "FAIL", _xmatters_fix(exc, settings))
    finally:
        client.close()
    who = "an API key" if xm.auth == "apikey" else f"user {xm.username}"
    return CheckResult(
        "xmatters REST", "OK", f"{xm.base_url}: events readable ({xm.auth} auth, {who})"
    )


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2].lower()


def check_trigger(
    name: str,
    var: str,
    url: str,
    settings: Settings,
    transport: httpx.BaseTransport | None,
) -> tuple[CheckResult, datetime | None]:
    """Is the trigger URL right, without creating anything?

    A trigger is only ever POSTed to; a POST creates an alert (a Flow HTTP trigger answers
    202 before its flow even looks at the body), so it is never sent here. Instead the URL
    is checked for the documented shape and then GET without credentials, next to a GET on
    the same path with a random, certainly unknown function id:

    * no answer at all -> FAIL (host, port, TLS, proxy);
    * both answers equal (xMatters, like the simulator, may answer 404 to any GET there)
      -> OK for reachability only: whether the id exists cannot be told apart this way;
    * they differ, and the real URL got 404 -> FAIL "trigger not found";
    * they differ otherwise (e.g. 405 for the real trigger, 404 for the unknown one) -> OK.

    The host must also be XMATTERS_BASE_URL's, or the trigger belongs to another instance.
    Returns the answer's Date too, for the clock check.
    """
    parts = urlsplit(url)
    host = _host(url)
    if not TRIGGER_PATH.search(parts.path):
        return (
            CheckResult(
                name,
                "FAIL",
                f"{var} does not look like an xMatters trigger URL (host {host}, path "
                f"{parts.path!r}): copy it from the workflow's HTTP trigger, e.g. https://"
                "acme.xmatters.com/api/integration/1/functions/<uuid>/triggers",
            ),
            None,
        )
    fake_path = re.sub(r"/functions/[^/]+/", f"/functions/{uuid.uuid4()}/", parts.path)
    fake = urlunsplit((parts.scheme, parts.netloc, fake_path, "", ""))
    xm = settings.xmatters
    timeout = xm.timeout if xm else 30.0
    options: dict[str, Any] = {"timeout": timeout, "follow_redirects": False}
    if transport is not None:
        options["transport"] = transport
    try:
        with httpx.Client(**options) as client:
            real = client.get(url, headers={"Accept": "application/json"})
            other = client.get(fake, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        return (
            CheckResult(
                name,
                "FAIL",
                f"cannot reach {var} host {host} ({type(exc).__name__}): check the URL, DNS, "
                "proxy and firewall",
            ),
            None,
        )
    date = parse_http_date(real.headers.get("Date"))
    base = xm.base_url if xm else None
    if base and _host(base) != host:
        return (
            CheckResult(
                name,
                "FAIL",
                f"{var} points at {host} but XMATTERS_BASE_URL at {_host(base)}: both must be "
                "the same xMatters instance (wrong tenant?)",
            ),
            date,
        )
    if 300 <= real.status_code < 400:
        where = _host(real.headers.get("Location", "")) or "?"
        return (
            CheckResult(
                name,
                "FAIL",
                f"{var} redirects ({real.status_code}) to {where}: use the final https URL",
            ),
            date,
        )
    if real.status_code >= 500:
        return (
            CheckResult(
                name,
                "FAIL",
                f"{host} answered {real.status_code} to {var}: server-side problem; try later",
            ),
            date,
        )
    if real.status_code == other.status_code:
        return (
            CheckResult(
                name,
                "OK",
                f"{host} answers (GET {real.status_code}); that this trigger id exists cannot be "
                "checked without sending a trigger, which would create an alert",
            ),
            date,
        )
    if real.status_code == 404:
        return (
            CheckResult(
                name,
                "FAIL",
                f"{var} was not found (404, while an unknown trigger gets {other.status_code}): "
                "copy the URL again from the workflow's HTTP trigger",
            ),
            date,
        )
    return (
        CheckResult(
            name,
            "OK",
            f"trigger found on {host} (GET {real.status_code} there, {other.status_code} for an unknown id)",
        ),
        date,
    )


def check_state_db(settings: Settings) -> CheckResult:
    url = settings.state_db_url
    path = sqlite_file(url)
    if path is not None and not path.exists():
        parent = path.parent
        if parent.is_dir():
            return CheckResult("state DB", "OK", f"{path} will be created at first start")
        return CheckResult(
            "state DB",
            "FAIL",
            f"the directory {parent} of IXM_STATE_DB does not exist: create it (writable by "
            "the daemon's user) or point IXM_STATE_DB elsewhere",
        )
    engine = make_engine(url)
    try:
        revision, newest = current_revision(engine), head_revision()
    except Exception as exc:
        return CheckResult("state DB", "FAIL", f"cannot open {shown_url(url)}: {exc}")
    finally:
        engine.dispose()
    note = "up to date" if revision == newest else "the daemon upgrades it at start"
    return CheckResult(
        "state DB",
        "OK",
        f"{shown_url(url)}: schema {revision or 'none'} (newest {newest}; {note})",
    )


def check_writeback(settings: Settings) -> CheckResult:
    """Which side writes xMatters activity back to Ivanti: the daemon, the original
    workflow's own write-back steps, or both with the daemon looking first."""
    wb, xm = settings.writeback, settings.xmatters
    if xm is None or not xm.rest_enabled or not wb.enabled:
        why = (
            "IXM_WRITEBACK=false" if xm is not None and xm.rest_enabled else "no XMATTERS_BASE_URL"
        )
        return CheckResult(
            "write-back",
            "OK",
            f"the daemon writes nothing back ({why}): only the original workflow's own "
            "write-back steps can, where xMatters reaches Ivanti",
        )
    if wb.workflow_writeback == "on":
        message = (
            "the original workflow writes notes back (IXM_WORKFLOW_WRITEBACK=on); the daemon "
            "writes none: keep the workflow's write-back steps, and xMatters able to reach Ivanti"
        )
    elif wb.workflow_writeback == "off":
        message = (
            "the daemon writes every note (IXM_WORKFLOW_WRITEBACK=off): remove the original "
            "workflow's write-back steps, or each note is written twice"
        )
    else:
        message = (
            "the daemon writes notes, each after looking in the incident's journal "
            f"{_fmt_wait(wb.workflow_writeback_wait)} after the activity "
            "(IXM_WORKFLOW_WRITEBACK=check): a note the original workflow's own write-back "
            "steps wrote is not written again"
        )
    return CheckResult("write-back", "OK", message)


def _fmt_wait(seconds: float) -> str:
    return f"{seconds:g} s"


def run_checks(
    settings: Settings,
    *,
    now: Callable[[], datetime] = render.utcnow,
    transport: httpx.BaseTransport | None = None,
) -> list[CheckResult]:
    """Every check, in order; each failure carries its fix. ``transport`` is for tests."""
    xm = settings.xmatters
    assert xm is not None and settings.ivanti is not None
    results = [CheckResult("config", "OK", "settings are valid"), check_state_db(settings)]
    results.append(check_writeback(settings))
    results += check_ivanti(settings, now, transport)
    results.append(check_xmatters_rest(settings, transport))
    urls = [("xmatters trigger", "XMATTERS_TRIGGER_URL", xm.trigger_url)]
    if xm.form_trigger_url and xm.form_trigger_url != xm.trigger_url:
        urls.append(("xmatters form trigger", "XMATTERS_FORM_TRIGGER_URL", xm.form_trigger_url))
    date: datetime | None = None
    for name, var, url in urls:
        result, seen = check_trigger(name, var, url, settings, transport)
        results.append(result)
        date = date or seen
    results.append(_skew("xmatters clock", "xMatters", date, now()))
    return results


def render_checks(results: Sequence[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{r.status:<4}  {r.name.ljust(width)}  {r.message}" for r in results]
    failed = sum(r.status == "FAIL" for r in results)
    lines.append(
        f"{failed} of {len(results)} checks failed"
        if failed
        else f"all {len(results)} checks passed"
    )
    return "\n".join(lines)


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = subparser(
        sub, "check", "validate the configuration and call both APIs (creates nothing)"
    )
    check.add_argument("--quiet", action="store_true", help="do not print the effective settings")


def run(args: argparse.Namespace) -> int:
    try:
        settings = load(args, require_targets=True)
    except ConfigError as exc:
        failed = [CheckResult("config", "FAIL", problem) for problem in exc.problems]
        for warning in exc.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.json:
            dump(
                {
                    "ok": False,
                    "config_error": str(exc),
                    "checks": [r.as_dict() for r in failed],
                }
            )
        else:
            print(render_checks(failed))
        return EX_CONFIG
    described = settings.describe()
    results = run_checks(settings, now=render.utcnow)
    ok = all(r.status != "FAIL" for r in results)
    if args.json:
        data: dict[str, Any] = {"ok": ok, "checks": [r.as_dict() for r in results]}
        if not args.quiet:
            data["settings"] = dict(described)
        dump(data)
    else:
        if not args.quiet:
            print("effective settings (secrets masked):")
            print(pairs(described, indent="  "))
            print()
        print(render_checks(results))
    return 0 if ok else 1
