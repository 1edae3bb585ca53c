"""Who may call the server: an optional bearer token and the Host names it answers to.

- Token: when `STREAM_POSE_TOKEN` is set (environment or `.env`, never a flag: see
  `stream_pose.secrets`), every route but `GET /health` (load balancers) and `GET /` (the live
  page, which holds no data) needs `Authorization: Bearer <token>`, else 401. It may hold several
  tokens, comma-separated: each is a tenant of its own (`tenant_of`), whose `/pose/hybrid`
  sessions other tenants can neither write into nor evict by guessing their ids. A browser cannot
  set headers on a WebSocket, so `WS /ws/pose` also takes `?token=`; the live page reads it from
  its own address (`http://host:5000/#token=...`: a fragment never leaves the browser).
- Host: requests whose `Host` header is not in `--allowed-hosts` get 400 (Starlette's
  `TrustedHostMiddleware`). The default, for a server bound to a loopback address, is the
  loopback names: a web page cannot then reach it by DNS rebinding (a name of the attacker's
  that resolves to 127.0.0.1 arrives with that name as its Host).
- JSON routes refuse a body sent as another content type (415, `serve.http.read_json`): the
  content types a page of another origin can POST without CORS's consent are form and text ones.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import ipaddress
import logging
import re
from typing import Any, Mapping

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from stream_pose.secrets import env_secret

TOKEN_ENV = "STREAM_POSE_TOKEN"
_QUERY_TOKEN = re.compile(r"([?&]token=)[^&\s\"']*")
OPEN_ROUTES = {("GET", "/health"), ("GET", "/"), ("HEAD", "/health"), ("HEAD", "/")}
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]"]  # Host headers bracket IPv6


def load_token() -> str | None:
    """`STREAM_POSE_TOKEN` from the environment or `.env`; None when unset or empty."""
    return env_secret(TOKEN_ENV)


def is_loopback(bind_host: str) -> bool:
    """True for "localhost" and loopback addresses (127.0.0.0/8, ::1): only this machine's
    processes can connect."""
    try:
        return bind_host == "localhost" or ipaddress.ip_address(bind_host).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(bind_host: str) -> list[str]:
    """The loopback names for a loopback bind address; any name (`*`) otherwise, where the
    operator's proxy or `--allowed-hosts` decides."""
    return list(LOOPBACK_HOSTS) if is_loopback(bind_host) else ["*"]


def split_tokens(setting: str | None) -> list[str]:
    """The tokens of a `STREAM_POSE_TOKEN` value ("a,b,c": three tenants); [] when unset."""
    return [t.strip() for t in (setting or "").split(",") if t.strip()]


def _sent_token(headers: Mapping[str, str], query: Mapping[str, str] | None) -> str:
    sent = headers.get("authorization", "")
    sent = sent[7:].strip() if sent[:7].lower() == "bearer " else ""
    if not sent and query is not None:
        sent = query.get("token", "")
    return sent


def matched_token(setting: str | None, headers: Mapping[str, str],
                  query: Mapping[str, str] | None = None) -> str | None:
    """The configured token the request carries (`Authorization: Bearer`, or `?token=` where
    `query` is given), else None. Every token is compared, in constant time, so the answer's
    timing does not tell which one came close."""
    sent = _sent_token(headers, query).encode()
    found = None
    for token in split_tokens(setting):
        if hmac.compare_digest(sent, token.encode()):
            found = token
    return found


def token_ok(setting: str | None, headers: Mapping[str, str],
             query: Mapping[str, str] | None = None) -> bool:
    """True when no token is required, or the request carries one of them."""
    return not split_tokens(setting) or matched_token(setting, headers, query) is not None


def tenant_of(setting: str | None, headers: Mapping[str, str],
              query: Mapping[str, str] | None = None) -> str:
    """Whose sessions a request may use: "" on a server without tokens (one tenant: whoever can
    reach it), else the first 12 hex digits of the SHA-256 of the token it carries (a name for
    logs and the session table that does not reveal the token)."""
    token = matched_token(setting, headers, query)
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else ""


def add_access_control(app: FastAPI, token: str | None, allowed_hosts: list[str]) -> None:
    """Install the Host check and, with a `token` setting, the bearer check on HTTP routes (the
    WebSocket route checks `token_ok` itself: HTTP middleware does not see WebSockets)."""
    if allowed_hosts != ["*"]:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    if not split_tokens(token):
        return

    @app.middleware("http")
    async def bearer(request: Any, call_next: Any) -> Any:
        if (request.method, request.url.path) in OPEN_ROUTES or token_ok(token, request.headers):
            return await call_next(request)
        return JSONResponse({"detail": f"send Authorization: Bearer <token> (the server's "
                                       f"{TOKEN_ENV})"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})


class RedactQueryToken(logging.Filter):
    """Masks `token=...` in log lines: uvicorn logs a WebSocket's path with its query
    (`"WebSocket /ws/pose?token=..." [accepted]`), and the page sends its token there."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _QUERY_TOKEN.sub(r"\1***", message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging configuration with `RedactQueryToken` on its handlers."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_token"] = {"()": RedactQueryToken}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_token")
    return config
