"""The HTTP side (docs/protocol.md, "HTTP"): routes from the coordinator,
the publish API for backends, conversations and history.

``Api`` is synchronous (Django views, Celery tasks, scripts); ``AsyncApi``
runs the same calls in a worker thread for asyncio code (FastAPI). Both
retry ``unavailable``, 429 and unreachable servers with backoff and jitter,
honouring ``Retry-After``; everything else raises ``SwitchboardError``
with the protocol's ``code``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Sequence

from .errors import SwitchboardError


def split_urls(coordinators: str | Sequence[str]) -> list[str]:
    """One base URL, several separated by commas, or a list of them."""
    urls = coordinators.split(",") if isinstance(coordinators, str) else list(coordinators)
    return [u.strip().rstrip("/") for u in urls if u.strip()]


def http_base(ws_url: str) -> str:
    """A server's HTTP base from its WebSocket URL (``ws://h/v1/ws`` → ``http://h``)."""
    base = ws_url.removesuffix("/v1/ws")
    if base.startswith("wss://"):
        return "https://" + base[len("wss://") :]
    return "http://" + base.removeprefix("ws://")


def backoff_delays(first: float = 0.1, cap: float = 5.0):
    """100 ms doubling to ``cap``, each ±50% (so retries spread out)."""
    delay = first
    while True:
        yield delay * random.uniform(0.5, 1.5)
        delay = min(delay * 2, cap)


def token_subject(token: str) -> str | None:
    """The ``sub`` of a JWT, read without verifying it (only to pick a server)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class Api:
    """Calls Switchboard over HTTP with a bearer ``token``: a user's token,
    or an API key of the servers (``SWITCHBOARD_API_KEYS``) for publishing.

    ``coordinators`` is one base URL or several (the coordinator's
    replicas); a lookup falls over to the next when one cannot be reached.
    """

    def __init__(
        self,
        coordinators: str | Sequence[str],
        token: str,
        *,
        retries: int = 6,
        timeout: float = 15.0,
    ) -> None:
        self.coordinators = split_urls(coordinators)
        if not self.coordinators:
            raise ValueError("no coordinator URL given")
        self.token = token
        self.retries = retries
        self.timeout = timeout
        # Any server answers every call; route as the token's user.
        self._routing_key = token_subject(token) or "system:api"

    # -- the transport ---------------------------------------------------

    def _once(self, method: str, url: str, body: Any, auth: bool) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)
                code, message = err["code"], err["message"]
            except (ValueError, KeyError, TypeError):
                code = "rate_limited" if e.code == 429 else "unavailable" if e.code >= 500 else "http"
                message = raw.decode(errors="replace")[:200] or e.reason
            error = SwitchboardError(code, message, e.code)
            error.retry_after = _retry_after(e.headers.get("Retry-After"))  # type: ignore[attr-defined]
            raise error from None
        except (urllib.error.URLError, OSError) as e:
            raise SwitchboardError("transport", f"cannot reach {url}: {e}") from None

    def _call(self, method: str, url: str, body: Any = None, *, auth: bool = True) -> Any:
        delays = backoff_delays()
        for attempt in range(self.retries + 1):
            try:
                return self._once(method, url, body, auth)
            except SwitchboardError as e:
                if not (e.retryable or e.status == 429) or attempt == self.retries:
                    raise
                wait = getattr(e, "retry_after", None) or next(delays)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _coordinator(self, path: str, query: dict[str, str]) -> Any:
        last: SwitchboardError | None = None
        q = urllib.parse.urlencode(query)
        for base in self.coordinators:
            try:
                return self._call("GET", f"{base}{path}?{q}" if q else f"{base}{path}", auth=False)
            except SwitchboardError as e:
                if e.code != "transport":
                    raise
                last = e
        assert last is not None
        raise last

    def _server(self) -> str:
        return http_base(self.route(self._routing_key)["ws_url"])

    # -- calls -------------------------------------------------------------

    def route(self, user_id: str, *, unreachable: str | None = None, wait_ms: int | None = None) -> dict:
        """``GET /v1/route``: the server that serves ``user_id`` now."""
        query = {"user_id": user_id}
        if unreachable:
            query["unreachable"] = unreachable
        if wait_ms is not None:
            query["wait_ms"] = str(wait_ms)
        return self._coordinator("/v1/route", query)

    def assignment(self) -> dict:
        """``GET /v1/assignment``: the partition map."""
        return self._coordinator("/v1/assignment", {})

    def publish(
        self,
        to: dict,
        body: Any,
        *,
        sender: str,
        idempotency_key: str | None = None,
        kind: str = "chat",
        anycast: bool = False,
        key: str | None = None,
    ) -> str:
        """``POST /v1/publish`` (the token must be an API key): to
        ``{"users": [...]}``, ``{"conversation": id}`` or ``{"channel": ch}``
        from ``sender`` (``system:<name>``). The same ``idempotency_key``
        gives the same msg_id, so a retry is never a second message."""
        item = publication(to, body, sender=sender, idempotency_key=idempotency_key, kind=kind, anycast=anycast, key=key)
        return self._call("POST", f"{self._server()}/v1/publish", item)["msg_id"]

    def publish_batch(self, items: Sequence[dict]) -> list[dict]:
        """``POST /v1/publish/batch``: items from ``publication()``; one
        ``{"msg_id"}`` or ``{"error": {"code","message"}}`` per item."""
        v = self._call("POST", f"{self._server()}/v1/publish/batch", {"items": list(items)})
        return v["results"]

    def send(self, to: dict, body: Any, *, client_msg_id: str | None = None, kind: str = "chat") -> str:
        """``POST /v1/messages`` as the token's user."""
        req = {"client_msg_id": client_msg_id or uuid.uuid4().hex, "to": to, "body": body, "kind": kind}
        return self._call("POST", f"{self._server()}/v1/messages", req)["msg_id"]

    def create_conversation(self, members: Sequence[str], conversation_id: str | None = None) -> dict:
        """``POST /v1/conversations``: a group with the token's user and ``members``."""
        req: dict[str, Any] = {"members": list(members)}
        if conversation_id:
            req["conversation_id"] = conversation_id
        return self._call("POST", f"{self._server()}/v1/conversations", req)

    def conversations(self) -> list[dict]:
        return self._call("GET", f"{self._server()}/v1/conversations")["conversations"]

    def history(self, conversation_id: str, *, before: str | None = None, limit: int = 50) -> dict:
        """One page, newest first: ``{"messages": [...], "next_before": token|None}``."""
        query = {"limit": str(limit)}
        if before:
            query["before"] = before
        path = f"/v1/conversations/{urllib.parse.quote(conversation_id, safe='')}/messages"
        return self._call("GET", f"{self._server()}{path}?{urllib.parse.urlencode(query)}")

    def history_all(self, conversation_id: str, *, page_size: int = 100) -> list[dict]:
        """Every message, newest first, page after page."""
        out: list[dict] = []
        before = None
        while True:
            page = self.history(conversation_id, before=before, limit=page_size)
            out.extend(page["messages"])
            before = page.get("next_before")
            if not before:
                return out


def publication(
    to: dict,
    body: Any,
    *,
    sender: str,
    idempotency_key: str | None = None,
    kind: str = "chat",
    anycast: bool = False,
    key: str | None = None,
) -> dict:
    """One item of ``POST /v1/publish`` (or of a batch)."""
    item: dict[str, Any] = {
        "to": to,
        "kind": kind,
        "body": body,
        "from": sender,
        "idempotency_key": idempotency_key or uuid.uuid4().hex,
    }
    if anycast:
        item["anycast"] = True
    if key is not None:
        item["key"] = key
    return item


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class AsyncApi:
    """``Api`` for asyncio code: each call runs in a worker thread."""

    def __init__(self, coordinators: str | Sequence[str], token: str, **kw: Any) -> None:
        self.sync = Api(coordinators, token, **kw)

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.sync, name)
        if not callable(call):
            return call

        async def run(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(call, *args, **kwargs)

        return run
