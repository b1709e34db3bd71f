"""The asyncio client of a device (docs/protocol.md, "WebSocket"): the Rust
client's guarantees in Python.

- Resolves its server through the coordinators; a server lost without a
  close code is reported on the next lookup, which waits for the map that
  moves it.
- ``hello`` carries the cursor, so a reconnect resumes what was missed; a
  ``redirect`` goes straight to the new owner; 4004/4005/4006 ask again.
- Messages are handed to the app once per msg_id (a resume may repeat one).
- A send resolves on the server's ack; unacknowledged sends are resent
  after every reconnect with the same ``client_msg_id`` (so the same
  msg_id), and ``unavailable``/``rate_limited`` ones after a backoff.
- The token is refreshed through a callback before it expires.
- Channel subscriptions are made again on every session from each
  channel's last cursor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import websockets

from .api import Api, backoff_delays
from .errors import SwitchboardError

log = logging.getLogger("switchboard")

#: Close codes after which the client asks the coordinator again at once.
RESOLVE_AGAIN = {4004, 4005, 4006}
#: How long a lookup that reports a lost server may wait for the map to move.
REPORT_WAIT_MS = 20_000


class _Seen:
    """The last ``limit`` msg_ids handed to the app."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ids: OrderedDict[str, None] = OrderedDict()

    def add(self, msg_id: str) -> bool:
        if msg_id in self.ids:
            return False
        self.ids[msg_id] = None
        if len(self.ids) > self.limit:
            self.ids.popitem(last=False)
        return True


def _moves_forward(old: str | None, new: str) -> bool:
    """Cursors are ``<log_epoch>:<offset>``; a new epoch always replaces."""
    if old is None:
        return True
    old_epoch, _, old_off = old.rpartition(":")
    new_epoch, _, new_off = new.rpartition(":")
    return old_epoch != new_epoch or int(new_off) > int(old_off)


def _close_code(ws: Any) -> int | None:
    """The server's close code; ``None`` when the connection just dropped
    (1006 is never sent: it is how a closure without a close frame reads)."""
    code = getattr(ws, "close_code", None)
    return None if code in (None, 1006) else code


class _Ended(Exception):
    """A session ended: how, and where to go next."""

    def __init__(self, code: int | None, redirect: tuple[str, int | None] | None = None) -> None:
        self.code = code
        self.redirect = redirect


class Client:
    """One device of ``user_id``. Use as ``async with Client(...) as c:``
    (or ``start()``/``close()``), then ``await c.send(...)`` and
    ``async for m in c.messages()``."""

    def __init__(
        self,
        coordinators: str | Sequence[str],
        user_id: str,
        token: str,
        *,
        device_id: str = "python",
        cursor: str | None = None,
        refresh_token: Callable[[], Awaitable[str]] | None = None,
        max_backoff: float = 5.0,
        dedupe: int = 10_000,
    ) -> None:
        self._routes = Api(coordinators, token, retries=0)
        self.user_id = user_id
        self.device_id = device_id
        self._token = token
        self._refresh = refresh_token
        self._max_backoff = max_backoff
        self._seen = _Seen(dedupe)
        self._handled = _Seen(dedupe)
        self.cursor = cursor
        self.channel_cursors: dict[str, str | None] = {}
        self._sub_waiters: dict[str, list[asyncio.Future]] = {}
        self._pending: OrderedDict[str, dict] = OrderedDict()
        self._inbox: asyncio.Queue[dict] = asyncio.Queue()
        self._ws: Any = None
        self._next_id = 0
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self.duplicates = 0
        #: Every state change, e.g. ``connected:ms1``, ``disconnected:4006``.
        self.states: list[str] = []
        self.refreshes = 0

    async def __aenter__(self) -> "Client":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        self._stop.set()
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        for p in self._pending.values():
            if not p["future"].done():
                p["future"].set_exception(SwitchboardError("stopped", "the client was closed"))

    # -- what the app calls --------------------------------------------------

    async def send(
        self,
        to: dict,
        body: Any,
        *,
        kind: str = "chat",
        client_msg_id: str | None = None,
        anycast: bool = False,
        key: str | None = None,
    ) -> str:
        """Sends to ``{"user": u}``, ``{"conversation": c}`` or ``{"channel": ch}``;
        returns the msg_id once Kafka has it, after as many reconnects as it
        takes. The same ``client_msg_id`` always gives the same msg_id."""
        cmid = client_msg_id or uuid.uuid4().hex
        self._next_id += 1
        frame: dict[str, Any] = {"type": "send", "id": self._next_id, "client_msg_id": cmid, "to": to, "body": body, "kind": kind}
        if anycast:
            frame["anycast"] = True
        if key is not None:
            frame["key"] = key
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[cmid] = {"id": self._next_id, "frame": json.dumps(frame), "future": future}
        await self._write(self._pending[cmid]["frame"])
        return await future

    async def subscribe(self, channel: str, cursor: str | None = None) -> dict:
        """Subscribes (again on every reconnect, from the channel's last
        cursor); returns the first ``subscribed`` frame."""
        if cursor is not None or channel not in self.channel_cursors:
            self.channel_cursors[channel] = cursor
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._sub_waiters.setdefault(channel, []).append(future)
        await self._write(self._subscribe_frame(channel))
        return await future

    async def unsubscribe(self, channel: str) -> None:
        self.channel_cursors.pop(channel, None)
        await self._write(json.dumps({"type": "unsubscribe", "channel": channel}))

    async def handled(self, channel: str, msg_id: str) -> None:
        """The app is done with an anycast message: no other subscriber gets it."""
        self._handled.add(msg_id)
        await self._write(json.dumps({"type": "handled", "channel": channel, "msg_id": msg_id}))

    async def messages(self) -> AsyncIterator[dict]:
        """Every message, once per msg_id, in the order delivered."""
        while True:
            yield await self._inbox.get()

    async def next_message(self, timeout: float | None = None) -> dict:
        return await asyncio.wait_for(self._inbox.get(), timeout)

    # -- the connection task ----------------------------------------------

    def _subscribe_frame(self, channel: str) -> str:
        frame: dict[str, Any] = {"type": "subscribe", "id": f"sub:{channel}", "channel": channel}
        if self.channel_cursors.get(channel):
            frame["cursor"] = self.channel_cursors[channel]
        return json.dumps(frame)

    async def _write(self, text: str) -> None:
        ws = self._ws
        if ws is None:
            return  # sent after the next welcome
        try:
            await ws.send(text)
        except websockets.ConnectionClosed:
            pass

    async def _run(self) -> None:
        delays = backoff_delays(0.1, self._max_backoff)
        suspect: str | None = None
        redirect: tuple[str, int | None] | None = None
        refreshed_after_refusal = False
        while not self._stop.is_set():
            server: str | None = None
            try:
                if redirect is None:
                    url, epoch, server = await self._lookup(suspect)
                else:
                    (url, epoch), server = redirect, None
                redirect, suspect = None, None
                await self._session(url, epoch)
                code: int | None = None  # _session always ends with _Ended
            except _Ended as end:
                code, redirect = end.code, end.redirect
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, SwitchboardError) as e:
                log.debug("session failed: %s", e)
                code = None
            except Exception:
                # The connection task outlives whatever went wrong in one session.
                log.exception("session ended by an unexpected error")
                code = None
            if self._stop.is_set():
                return
            self.states.append(f"disconnected:{code}")
            if redirect is not None:
                continue
            if code == 4001:
                if self._refresh is None or refreshed_after_refusal:
                    self._fail_all(SwitchboardError("unauthorized", "the token was refused"))
                    return
                self._token = await self._refresh()
                self.refreshes += 1
                refreshed_after_refusal = True
                continue
            if code in RESOLVE_AGAIN:
                delays = backoff_delays(0.1, self._max_backoff)
                continue
            # Lost without a close code: report the server on the next lookup.
            suspect = server if code is None else None
            try:
                await asyncio.wait_for(self._stop.wait(), next(delays))
            except asyncio.TimeoutError:
                pass

    async def _lookup(self, suspect: str | None) -> tuple[str, int | None, str]:
        wait = REPORT_WAIT_MS if suspect else None
        route = await asyncio.to_thread(self._routes.route, self.user_id, unreachable=suspect, wait_ms=wait)
        return route["ws_url"], route.get("epoch"), route["server_id"]

    async def _session(self, url: str, epoch: int | None) -> None:
        hello: dict[str, Any] = {"type": "hello", "token": self._token, "device_id": self.device_id}
        if self.cursor:
            hello["cursor"] = self.cursor
        if epoch is not None:
            hello["epoch"] = epoch
        async with websockets.connect(url, open_timeout=10, ping_interval=10, ping_timeout=20, max_size=1 << 20) as ws:
            await ws.send(json.dumps(hello))
            welcome = await self._welcome(ws)
            self._ws = ws
            refresh = asyncio.create_task(self._refresh_loop(ws, welcome.get("token_exp")))
            try:
                for p in list(self._pending.values()):
                    await ws.send(p["frame"])
                for channel in list(self.channel_cursors):
                    await ws.send(self._subscribe_frame(channel))
                async for text in ws:
                    end = await self._on_frame(json.loads(text))
                    if end is not None:
                        raise end
            except websockets.ConnectionClosed:
                pass
            finally:
                self._ws = None
                refresh.cancel()
            raise _Ended(_close_code(ws))

    async def _welcome(self, ws: Any) -> dict:
        try:
            while True:
                f = json.loads(await asyncio.wait_for(ws.recv(), 15))
                if f.get("type") == "welcome":
                    break
                if f.get("type") == "redirect":
                    raise _Ended(None, (f["ws_url"], f.get("epoch")))
        except websockets.ConnectionClosed:
            raise _Ended(_close_code(ws)) from None
        self.states.append(f"connected:{f['server_id']}")
        if self.cursor is None:
            # Until the first message: a reconnect must not come back without one.
            self.cursor = f["cursor"]
        return f

    async def _refresh_loop(self, ws: Any, exp: int | None) -> None:
        while exp is not None and self._refresh is not None:
            left = exp - time.time()
            await asyncio.sleep(max(0.0, max(left / 2, left - 60)))
            self._token = await self._refresh()
            self.refreshes += 1
            await ws.send(json.dumps({"type": "auth", "token": self._token}))
            exp = None  # the `authed` answer schedules the next one

    async def _on_frame(self, f: dict) -> _Ended | None:
        kind = f.get("type")
        if kind == "message":
            await self._on_message(f)
        elif kind == "ack":
            p = self._pending.pop(f.get("client_msg_id"), None)
            if p and not p["future"].done():
                p["future"].set_result(f["msg_id"])
        elif kind == "subscribed":
            self.channel_cursors[f["channel"]] = f.get("cursor")
            for w in self._sub_waiters.pop(f["channel"], []):
                if not w.done():
                    w.set_result(f)
        elif kind == "error":
            self._on_error(f)
        elif kind == "authed" and self._refresh is not None and self._ws is not None:
            asyncio.create_task(self._refresh_loop(self._ws, f.get("exp")))
        elif kind == "redirect":
            return _Ended(None, (f["ws_url"], f.get("epoch")))
        return None

    async def _on_message(self, m: dict) -> None:
        channel = m.get("channel")
        if self._seen.add(m["msg_id"]):
            await self._inbox.put(m)
        else:
            self.duplicates += 1
            if m.get("anycast") and channel and m["msg_id"] in self._handled.ids:
                await self.handled(channel, m["msg_id"])
        # Only past what the app has been handed: a resume replays the rest.
        if channel:
            if m.get("cursor") and channel in self.channel_cursors:
                self.channel_cursors[channel] = m["cursor"]
        elif m.get("kind") == "chat" and m.get("cursor") and _moves_forward(self.cursor, m["cursor"]):
            self.cursor = m["cursor"]

    def _on_error(self, f: dict) -> None:
        rid, code = f.get("id"), f.get("code", "unknown")
        error = SwitchboardError(code, f.get("message", ""))
        if isinstance(rid, str) and rid.startswith("sub:"):
            channel = rid[len("sub:") :]
            if code != "unavailable":
                self.channel_cursors.pop(channel, None)
                for w in self._sub_waiters.pop(channel, []):
                    if not w.done():
                        w.set_exception(error)
            return
        for cmid, p in list(self._pending.items()):
            if p["id"] != rid:
                continue
            if error.retryable:
                # Resent after a backoff, with the same client_msg_id.
                asyncio.get_running_loop().call_later(0.2, lambda fr=p["frame"]: asyncio.ensure_future(self._write(fr)))
            else:
                del self._pending[cmid]
                if not p["future"].done():
                    p["future"].set_exception(error)

    def _fail_all(self, error: SwitchboardError) -> None:
        for p in self._pending.values():
            if not p["future"].done():
                p["future"].set_exception(error)
        self._pending.clear()
        for waiters in self._sub_waiters.values():
            for w in waiters:
                if not w.done():
                    w.set_exception(error)
        self._sub_waiters.clear()
