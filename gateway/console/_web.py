"""The console's pages (FastAPI sub-application mounted at ``/console``).

Server-rendered (Jinja2, autoescaped); one small script of our own polls the dashboard
(static/console.js); every asset ships in the package and the Content-Security-Policy
allows nothing from elsewhere. No patient data in URLs: a search is a POST whose filter
stays in the store under an opaque id (``?q=``, any worker process finds it: _searches.py);
a message is named by its store id.
Every page that shows a message's content, and every search result, writes an
``api-read`` AuditEvent naming the console user.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..audit import AuditLog, Subject, bundle_subject, events, message_subject
from ..config import Settings
from ..errors import GatewayError, Issue, first_nul, nul_message
from ..store import MAX_ID, STATES, MessageFilter, Page, Store, is_row_id, parse_since
from . import _data
from ._actions import MESSAGE_ACTIONS, OUTBOX_ACTIONS, Actions
from ._audit import basis_names
from ._labels import translate
from ._live import breaker_states
from ._searches import Searches
from ._session import COOKIE, PRE_COOKIE, LoginLimiter, Session, Sessions, same_token
from ._users import LANGS, ROLES, User, Users

__all__ = ["create_console"]

log = logging.getLogger("gateway.console")
HERE = Path(__file__).parent
PREFIX = "/console"
MAX_FORM = 64 * 1024
PAGE = 50
_UNAUDITED = "the audit log could not record this view [audit.write-failed]"
_SINCE = "since: 30m, 2h, 7d or an ISO 8601 time (2026-12-01T08:00)"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


_R = TypeVar("_R", bound=Response)


class _Denied(Exception):
    def __init__(self, status: int, key: str, detail: str | None = None) -> None:
        self.status, self.key, self.detail = status, key, detail


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else "-"


def create_console(
    settings: Settings,
    store: Callable[[], Store],
    converter: Callable[[], Any],
    convert_lock: threading.Lock,
) -> FastAPI:
    """The console app over the API's store and converter (``gateway serve`` mounts it
    at /console: gateway/api/_app.py)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        # every answer, FastAPI's own too (404, a 422 that echoes a parameter) and the
        # static files: framed nowhere, never sniffed, never cached
        response: Response = await call_next(request)
        return _secure(response)

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    actions = Actions(settings, store, converter, convert_lock)

    def session_of(request: Request, touch: bool = True) -> Session | None:
        return Sessions(store()).get(request.cookies.get(COOKIE), touch)

    def render(
        request: Request, name: str, session: Session | None, status: int = 200, **values: Any
    ) -> HTMLResponse:
        lang = session.user.lang if session else _anonymous_lang(request)
        html = _env.get_template(name).render(
            t=lambda key: translate(lang, key),
            lang=lang,
            langs=LANGS,
            user=session.user if session else None,
            csrf=session.csrf if session else values.pop("pre", ""),
            prefix=PREFIX,
            when=_when,
            pick=lambda texts: _pick(lang, texts),
            basis=basis_names,
            **values,
        )
        return _secure(HTMLResponse(html, status))

    def denied(request: Request, session: Session | None, exc: _Denied) -> HTMLResponse:
        return render(
            request, "error.html", session, exc.status, message=exc.key, detail=exc.detail
        )

    async def form(request: Request, session: Session | None) -> dict[str, str]:
        """The POSTed form, once its CSRF token matched (403 otherwise)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_FORM:  # refused before it is read
            raise _Denied(413, "app.bad_request")
        body = await request.body()
        if len(body) > MAX_FORM:
            raise _Denied(413, "app.bad_request")
        fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        expected = session.csrf if session else request.cookies.get(PRE_COOKIE)
        if not same_token(fields.get("csrf"), expected):
            log.warning("console: a POST to %s without a valid CSRF token", request.url.path)
            raise _Denied(403, "app.bad_request")
        # a reason, a search value holding NUL: PostgreSQL's text holds none (its insert
        # or look-up failed: a 500); named, its text neither shown back nor logged
        if (name := first_nul(fields.items())) is not None:
            raise _Denied(400, "app.bad_request", nul_message(f"the field {name!r}"))
        return fields

    def audit_read(request: Request, user: User, subject: Subject, interaction: str) -> bool:
        """Records the view; False when the record could not be written (the page is
        then refused: no view of patient data goes unaudited). Its own transaction, not
        the pipeline's deferred one: the view waits until its record is kept."""
        if not settings.audit_enabled:
            return True
        event = events.api_read(
            "console", user.name, subject, interaction=interaction, network=_client(request)
        )
        return AuditLog(store()).record_guarded(None, event)

    def unaudited(request: Request, session: Session) -> HTMLResponse:
        log.error("console: a view refused, its audit record failed [audit.write-failed]")
        return render(request, "error.html", session, 503, message="app.error", detail=_UNAUDITED)

    def need(request: Request, roles: tuple[str, ...] = ROLES, touch: bool = True) -> Session:
        """The signed-in session whose role is one of ``roles``: without one the page
        redirects to the sign-in form, with another role it is refused (403)."""
        session = session_of(request, touch)
        if session is None:
            raise _Login()
        if session.user.role not in roles:
            raise _Denied(403, "app.forbidden")
        return session

    async def posted(
        request: Request, roles: tuple[str, ...] = ROLES
    ) -> tuple[Session, dict[str, str]]:
        """A signed-in user's POST: the session (as ``need``) and its CSRF-checked form."""
        session = need(request, roles)
        return session, await form(request, session)

    # What every page does when ``need`` or ``form`` stops it, held here once.
    @app.exception_handler(_Login)
    async def to_login(request: Request, exc: _Login) -> Response:
        return _redirect("/login")

    @app.exception_handler(_Denied)
    async def refused(request: Request, exc: _Denied) -> Response:
        return denied(request, session_of(request), exc)

    # -- sign-in --------------------------------------------------------------------------
    @app.get("/")
    async def root(request: Request) -> Response:
        return _redirect("/dashboard")

    @app.get("/login")
    async def login_page(request: Request) -> Response:
        pre = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(32)
        response = render(request, "login.html", None, pre=pre, failed=None)
        _cookie(response, PRE_COOKIE, pre, max_age=3600, path="/")
        lang = request.query_params.get("lang")
        if lang in LANGS:
            _cookie(response, "gw_console_lang", lang, max_age=365 * 86400, http_only=False)
        return response

    @app.post("/login")
    async def login(request: Request) -> Response:
        try:
            fields = await form(request, None)
        except _Denied as exc:  # the sign-in page is refused as anonymous, whatever the cookie
            return denied(request, None, exc)
        name, password = fields.get("name", ""), fields.get("password", "")
        keys = (f"name:{name}", f"ip:{_client(request)}")
        pre = request.cookies.get(PRE_COOKIE, "")
        limiter = LoginLimiter(store())  # rows: every worker process counts the same
        if await run_in_threadpool(limiter.blocked, *keys):
            log.warning("console: sign-in refused (rate limit) from %s", _client(request))
            return render(request, "login.html", None, 429, pre=pre, failed="login.limited")
        user = await run_in_threadpool(Users(store()).authenticate, name, password)
        if user is None:
            await run_in_threadpool(limiter.failed, *keys)
            log.warning("console: failed sign-in from %s", _client(request))
            return render(request, "login.html", None, 401, pre=pre, failed="login.failed")
        await run_in_threadpool(limiter.succeeded, keys[0])
        # the session this browser had (a fixed cookie, the previous user's on a shared
        # PC) ends: only the new token is valid after a sign-in
        await run_in_threadpool(Sessions(store()).end, request.cookies.get(COOKIE))
        token = await run_in_threadpool(Sessions(store()).start, user)
        response = _redirect("/dashboard")
        _cookie(response, COOKIE, token, path="/")
        _forget(response, PRE_COOKIE)
        log.info("console: %s signed in (%s)", user.name, user.role)
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        session = session_of(request, touch=False)
        if session is not None:  # a live session ends only with its own CSRF token
            await form(request, session)
            Sessions(store()).end(request.cookies.get(COOKIE))
        # Without one (expired, ended elsewhere) there is nothing to end: no CSRF token
        # can be checked, and none is needed, since nothing changes on the server; the
        # browser goes back to the sign-in form. A stale cookie it sent is dropped (a
        # cross-site POST carries no SameSite=Strict cookie, so cannot drop a live one).
        response = _redirect("/login")
        if request.cookies.get(COOKIE):
            _forget(response, COOKIE)
        return response

    @app.post("/lang")
    async def switch_lang(request: Request) -> Response:
        session, fields = await posted(request)
        lang = fields.get("lang", "")
        if lang in LANGS:  # remembered for the user, whichever browser they use next
            Users(store()).set_lang(session.user.id, lang)
        back = fields.get("back", "")
        return _redirect(back if back.startswith("/") and not back.startswith("//") else "/")

    # -- dashboard ------------------------------------------------------------------------
    @app.get("/dashboard")
    async def dashboard(request: Request, fragment: int = 0) -> Response:
        # the fragment is console.js polling every 10 s: not the user's activity, or an
        # open dashboard would never reach the idle timeout
        session = need(request, touch=not fragment)
        data = await run_in_threadpool(_data.dashboard, store(), breaker_states())
        name = "dashboard_live.html" if fragment else "dashboard.html"
        return render(
            request,
            name,
            session,
            data=data,
            columns=_data.COLUMNS,
            partner_columns=_data.PARTNER_COLUMNS,
            spark=_data.sparkline,
            alerts=_alerts(settings, store()),
        )

    # -- messages -------------------------------------------------------------------------
    @app.get("/messages")
    async def messages(request: Request, q: str = "", after: str = "") -> Response:
        session = need(request)
        found = await run_in_threadpool(Searches(store()).get, q, session.user.id)
        where = found or MessageFilter()
        cursor = after if is_row_id(after) else None
        page: Page = await run_in_threadpool(store().find, where, PAGE, cursor)
        if page.items:
            records = tuple(r for m in page.items for r in message_subject(m.id).records)
            if not audit_read(request, session.user, Subject(None, records), "search-type"):
                return unaudited(request, session)
        return render(
            request,
            "messages.html",
            session,
            page=page,
            q=q if found is not None else "",
            where=where,
            states=STATES,
        )

    @app.post("/messages")
    async def search(request: Request) -> Response:
        session, fields = await posted(request)
        try:
            since = fields.get("since", "").strip()
            where = MessageFilter(
                state=fields.get("state") or None,
                sender=fields.get("sender", "").strip() or None,
                message_type=fields.get("type", "").strip() or None,
                since=parse_since(since, settings.timezone) if since else None,
                patient=fields.get("patient", "").strip() or None,
                control_id=fields.get("control_id", "").strip() or None,
            )
        except GatewayError:  # its message quotes what was typed: not shown back, not logged
            return render(
                request, "error.html", session, 400, message="app.bad_request", detail=_SINCE
            )
        qid = await run_in_threadpool(Searches(store()).save, session.user.id, where)
        return _redirect(f"/messages?q={qid}")

    @app.get("/messages/{message_id}")
    async def message(request: Request, message_id: int) -> Response:
        session = need(request)
        found = None
        if 0 < message_id <= MAX_ID:
            found = await run_in_threadpool(_data.detail, store(), message_id)
        if found is None:
            return render(request, "error.html", session, 404, message="app.not_found")
        bundle = next((o.output for o in reversed(found.message.outcomes) if o.output), None)
        subject = _subject_of(bundle, message_id)
        if not audit_read(request, session.user, subject, "read"):
            return unaudited(request, session)
        return render(
            request,
            "message.html",
            session,
            d=found,
            s=found.message.summary,
            message_actions=MESSAGE_ACTIONS,
            done=request.query_params.get("done"),
        )

    @app.post("/messages/{message_id}/{action}")
    async def act_on_message(request: Request, message_id: int, action: str) -> Response:
        return await _act(request, action, MESSAGE_ACTIONS, message_id, None)

    @app.post("/outbox/{row_id}/{action}")
    async def act_on_outbox(request: Request, row_id: int, action: str) -> Response:
        return await _act(request, action, OUTBOX_ACTIONS, None, row_id)

    async def _act(
        request: Request,
        action: str,
        allowed: tuple[str, ...],
        message_id: int | None,
        row_id: int | None,
    ) -> Response:
        session, fields = await posted(request, ("operator", "admin"))
        target_id = message_id if message_id is not None else row_id
        if action not in allowed or not (target_id and 0 < target_id <= MAX_ID):
            return render(request, "error.html", session, 404, message="app.not_found")
        reason = fields.get("reason", "")
        target: int | None
        try:
            if message_id is not None:
                await run_in_threadpool(
                    actions.on_message, action, message_id, session.user, reason
                )
                target = message_id
            else:
                assert row_id is not None
                target = await run_in_threadpool(
                    actions.on_outbox, action, row_id, session.user, reason
                )
        except GatewayError as exc:
            log.warning("console: %s refused [%s]", action, exc.code)
            return render(
                request,
                "error.html",
                session,
                409,
                message="app.error",
                detail=_refusal(exc.issue),
            )
        log.info("console: %s by %s", action, session.user.name)
        return _redirect(f"/messages/{target}?done={action}" if target else "/dashboard")

    # -- referrals, alerts, auditor -------------------------------------------------------
    @app.get("/referrals")
    async def referrals(request: Request) -> Response:
        session = need(request)
        rows = await run_in_threadpool(_referrals, settings, store())
        if rows:  # referrals are about patients: the listing is audited as a search
            tasks = tuple(f"Task/{r['task']}" for r in rows)
            if not audit_read(request, session.user, Subject(None, tasks), "search-type"):
                return unaudited(request, session)
        return render(request, "referrals.html", session, rows=rows)

    @app.get("/alerts")
    async def alerts(request: Request) -> Response:
        session = need(request)
        return render(request, "alerts.html", session, alerts=_alerts(settings, store()))

    @app.get("/audit")
    async def auditor(request: Request, year: int | None = None) -> Response:
        session = need(request, ("auditor", "admin"))
        from ._audit import auditor_view

        view = await run_in_threadpool(auditor_view, settings, store(), year)
        return render(request, "auditor.html", session, v=view)

    return app


class _Login(Exception):
    """No session: the page redirects to the login form."""


def _subject_of(bundle: bytes | None, message_id: int) -> Subject:
    """The message (and its patient, by the Bundle's Patient id) an audit event names."""
    import orjson

    if bundle is not None:
        try:
            parsed = orjson.loads(bundle)
        except orjson.JSONDecodeError:
            parsed = orjson.loads(bundle.splitlines()[0])
        if isinstance(parsed, dict):
            return bundle_subject(parsed, message_id)
    return message_subject(message_id)


def _pick(lang: str, texts: Any) -> str:
    """A text of the policy's or the network's data in the page's language (their
    Traditional Chinese is keyed zh-Hant)."""
    if not isinstance(texts, dict):
        return str(texts or "")
    for key in (lang, "zh-Hant" if lang == "zh-Hant-HK" else lang):
        if texts.get(key):
            return str(texts[key])
    return ""


def _anonymous_lang(request: Request) -> str:
    chosen = request.query_params.get("lang") or request.cookies.get("gw_console_lang")
    return chosen if chosen in LANGS else "zh-Hans"


def _refusal(issue: Issue) -> str:
    """A refused action's error as the page shows it: the record and field it names
    (a reprocess refused names the message and MSH-4), the problem, the code."""
    where = ": ".join(p for p in (issue.record, issue.location) if p)
    return f"{where + ': ' if where else ''}{issue.message} [{issue.code}]"


def _redirect(path: str) -> Response:
    return _secure(RedirectResponse(PREFIX + path, 303))


def _secure(response: _R) -> _R:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _cookie(
    response: Response,
    name: str,
    value: str,
    max_age: int | None = None,
    http_only: bool = True,
    path: str = PREFIX,
) -> None:
    """A cookie of the console's; the ``__Host-`` ones need ``path="/"``."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        secure=True,
        httponly=http_only,
        samesite="strict",
    )


def _forget(response: Response, name: str) -> None:
    """Deletes a ``__Host-`` cookie (a browser ignores the deletion without Secure)."""
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="strict")


def _referrals(settings: Settings, store: Store) -> list[dict[str, Any]]:
    from ..inbound import Referrals

    return [r.to_json() for r in Referrals(settings, store).list()]


def _alerts(settings: Settings, store: Store) -> list[dict[str, Any]] | None:
    """The alerts firing now (gateway.alerts.current), as the templates read them; None
    while the thresholds file cannot be read (the page says so; `gateway alerts check`
    names the file and key)."""
    from ..alerts import current
    from ..store import utcnow

    try:
        return [alert.to_json() for alert in current(store, settings, utcnow())]
    except GatewayError:
        return None
