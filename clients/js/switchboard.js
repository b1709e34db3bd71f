// Switchboard client for browsers and Node: an ES module with no build step
// and no dependencies. It keeps the guarantees of the Rust client
// (docs/clients.md): resolve through the coordinator (several URLs, fail
// over), hello with the last cursor, follow redirects and 4004/4005/4006 by
// resolving again, back off with jitter on other failures, drop duplicate
// msg_ids, resend unacknowledged sends with the same client_msg_id, refresh
// the token through a callback, and subscribe to channels again after every
// reconnect from each channel's last cursor.

/** Close codes of the protocol (docs/protocol.md, "WebSocket"). */
export const CloseCode = Object.freeze({
  UNAUTHORIZED: 4001, NO_HELLO: 4002, PROTOCOL_VIOLATION: 4003, TOO_SLOW: 4004,
  PARTITION_MOVED: 4005, DRAINING: 4006, RATE_LIMITED: 4008, TOO_MANY_DEVICES: 4009,
});

/** A refusal by the server: `code` is the protocol's error code. */
export class SwitchboardError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "SwitchboardError";
    this.code = code;
  }
}

/** Cursors kept in memory only (Node, tests). */
export class MemoryCursorStore {
  constructor() { this.map = new Map(); }
  get(key) { return this.map.get(key) ?? null; }
  set(key, value) { this.map.set(key, value); }
  delete(key) { this.map.delete(key); }
}

/** Cursors kept in `localStorage` (the browser default), so a reload resumes. */
export class LocalStorageCursorStore {
  constructor(storage = globalThis.localStorage, prefix = "switchboard.") {
    this.storage = storage;
    this.prefix = prefix;
  }
  get(key) { return this.storage.getItem(this.prefix + key); }
  set(key, value) { this.storage.setItem(this.prefix + key, value); }
  delete(key) { this.storage.removeItem(this.prefix + key); }
}

/** The last `limit` msg_ids, for dropping duplicates in bounded memory. */
class Seen {
  constructor(limit) { this.limit = limit; this.set = new Set(); }
  has(id) { return this.set.has(id); }
  add(id) {
    if (this.set.has(id)) return false;
    this.set.add(id);
    if (this.set.size > this.limit) this.set.delete(this.set.values().next().value);
    return true;
  }
}

const RETRYABLE = new Set(["unavailable", "rate_limited"]);
/** How long a lookup that reports a server may wait for the map to move the user. */
const REPORT_WAIT_MS = 20000;
const RESOLVE_AGAIN = new Set([CloseCode.TOO_SLOW, CloseCode.PARTITION_MOVED, CloseCode.DRAINING]);

function splitUrls(coordinators) {
  const list = Array.isArray(coordinators) ? coordinators : String(coordinators).split(",");
  return list.map((u) => u.trim().replace(/\/$/, "")).filter(Boolean);
}

function randomId() {
  if (globalThis.crypto && globalThis.crypto.randomUUID) return globalThis.crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

async function answer(r) {
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new SwitchboardError(body.code || "unavailable", body.message || `HTTP ${r.status}`);
  return body;
}

/** The HTTP API: routes, conversations, history, and the publish API. */
export class Api {
  /** @param {{coordinators: string|string[], token?: string, fetch?: Function}} options */
  constructor({ coordinators, token = "", fetch = globalThis.fetch }) {
    this.coordinators = splitUrls(coordinators);
    this.token = token;
    this.fetch = fetch.bind(globalThis);
    this.next = 0;
  }

  /**
   * Where `userId`'s devices connect; tries each coordinator in turn. With
   * `unreachable` (a server the device could not reach or just lost) the
   * coordinator checks that server and waits up to `waitMs` for a map that
   * moved the user elsewhere (docs/protocol.md, "Failover").
   */
  async route(userId, { unreachable, waitMs } = {}) {
    let query = `user_id=${encodeURIComponent(userId)}`;
    if (unreachable) query += `&unreachable=${encodeURIComponent(unreachable)}&wait_ms=${waitMs || 0}`;
    let last;
    for (let i = 0; i < this.coordinators.length; i++) {
      const base = this.coordinators[(this.next + i) % this.coordinators.length];
      try {
        const r = await this.fetch(`${base}/v1/route?${query}`);
        this.next = (this.next + i) % this.coordinators.length;
        return await answer(r);
      } catch (e) { last = e; }
    }
    this.next = (this.next + 1) % this.coordinators.length;
    throw last || new SwitchboardError("unavailable", "no coordinator");
  }

  /** The HTTP base of a server (any server answers the HTTP API). */
  async base(userId) {
    const r = await this.route(userId);
    return r.ws_url.replace(/^ws/, "http").replace(/\/v1\/ws$/, "");
  }

  async call(base, method, path, body) {
    const init = { method, headers: { authorization: `Bearer ${this.token}` } };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await this.fetch(`${base}${path}`, init);
    return r.status === 204 ? null : answer(r);
  }

  /** The caller's group conversations. */
  conversations(base) { return this.call(base, "GET", "/v1/conversations"); }
  createConversation(base, members, conversationId) {
    return this.call(base, "POST", "/v1/conversations", { conversation_id: conversationId, members });
  }
  /** One page of history, newest first; pass `page.next_before` for the next. */
  history(base, conversationId, { before, limit = 50 } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before) q.set("before", before);
    return this.call(base, "GET", `/v1/conversations/${encodeURIComponent(conversationId)}/messages?${q}`);
  }
  /** Every message of a conversation, oldest first, page by page. */
  async *allHistory(base, conversationId, pageSize = 200) {
    let before;
    for (;;) {
      const page = await this.history(base, conversationId, { before, limit: pageSize });
      for (const m of page.messages) yield m;
      if (!page.next_before) return;
      before = page.next_before;
    }
  }
  /** Backends with an API key as `token`: `publication` as in docs/protocol.md. */
  publish(base, publication) { return this.call(base, "POST", "/v1/publish", publication); }
  publishBatch(base, items) { return this.call(base, "POST", "/v1/publish/batch", { items }); }
}

/**
 * One device of one user, connected to whichever server owns the user.
 * Events: `message` (once per msg_id), `state` (connecting, connected,
 * resuming, disconnected), `subscribed`, `presence` (a watched user came
 * online or went offline; after a reconnect, each watched user's state),
 * `join` / `leave` (presence channels), `error`.
 */
export class Client {
  constructor(options) {
    const o = { maxBackoffMs: 5000, dedupe: 10000, connectTimeoutMs: 10000, ...options };
    if (!o.userId || !o.token || !o.coordinators) throw new TypeError("coordinators, userId and token are required");
    this.o = o;
    this.WebSocket = o.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    this.api = new Api({ coordinators: o.coordinators, token: o.token, fetch: o.fetch });
    this.store = o.cursorStore
      || (globalThis.localStorage ? new LocalStorageCursorStore() : new MemoryCursorStore());
    this.deviceId = o.deviceId || this.store.get(`device.${o.userId}`) || `js-${randomId()}`;
    this.store.set(`device.${o.userId}`, this.deviceId);
    this.token = o.token;
    this.listeners = new Map();
    this.seen = new Seen(o.dedupe);
    // Anycast publications this app answered `handled` (answered again if redelivered).
    this.handledIds = new Seen(o.dedupe);
    this.pending = new Map(); // client_msg_id -> {frame, id, resolve, reject, sent}
    this.channels = new Map(); // channel -> {waiters: [], sent}
    this.watched = new Set(); // users watched, watched again on every session
    this.asks = new Map(); // "presence:N" -> {resolve, reject}
    this.target = null; // {server_id, ws_url, epoch} of the session being tried
    this.suspect = null; // the server the last session failed on, reported next
    this.nextId = 0;
    this.delay = 100;
    this.state = "disconnected";
    this.stopped = true;
    this.ws = null;
  }

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.listeners.get(event).delete(fn);
  }

  emit(event, value) {
    for (const fn of this.listeners.get(event) || []) {
      try { fn(value); } catch (e) { if (event !== "error") this.emit("error", e); }
    }
  }

  setState(state, detail = {}) {
    this.state = state;
    this.emit("state", { state, ...detail });
  }

  /** The user's chat cursor (resume point), as the cursor store keeps it. */
  get cursor() { return this.store.get(`cursor.${this.o.userId}`); }
  channelCursor(channel) { return this.store.get(`channel.${this.o.userId}.${channel}`); }

  /** Starts connecting (and keeps reconnecting until `close`). */
  connect() {
    if (!this.stopped) return;
    this.stopped = false;
    this.open(null);
  }

  /** Stops for good: pending sends and subscribes are rejected. */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.helloTimer);
    clearTimeout(this.refreshTimer);
    clearTimeout(this.liveTimer);
    if (this.ws) this.ws.close(1000);
    const stopped = new SwitchboardError("stopped", "the client was closed");
    for (const p of this.pending.values()) p.reject(stopped);
    this.pending.clear();
    for (const c of this.channels.values()) for (const w of c.waiters) w.reject(stopped);
    this.channels.clear();
    for (const a of this.asks.values()) a.reject(stopped);
    this.asks.clear();
    this.setState("disconnected", { code: 1000 });
  }

  /**
   * Sends to `{user}`, `{conversation}` or `{channel}`; resolves with the
   * msg_id once Kafka has it, after as many reconnects as it takes. The
   * same `clientMsgId` always gives the same msg_id.
   */
  send(to, body, { kind = "chat", clientMsgId = randomId(), anycast, key } = {}) {
    return new Promise((resolve, reject) => {
      const id = ++this.nextId;
      const send = { type: "send", id, client_msg_id: clientMsgId, to, body, kind };
      if (anycast) send.anycast = true;
      if (key !== undefined) send.key = key;
      const frame = JSON.stringify(send);
      this.pending.set(clientMsgId, { id, frame, resolve, reject, sent: false });
      this.flushPending();
    });
  }

  /**
   * Publishes to one subscriber of `channel` (anycast); with `key`, the same
   * subscriber while it stays subscribed. Resolves with the msg_id.
   */
  anycast(channel, body, { kind = "chat", key, clientMsgId } = {}) {
    return this.send({ channel }, body, { kind, key, clientMsgId, anycast: true });
  }

  /**
   * Tells the server the app is done with an anycast `message` (one with
   * `anycast: true`): it goes to no other subscriber. Not queued: if the
   * connection is down it goes to another subscriber, and if it comes back
   * here the duplicate is dropped and answered again.
   */
  handled(channel, msgId) {
    this.handledIds.add(msgId);
    return this.write({ type: "handled", channel, msg_id: msgId });
  }

  /** Subscribes to a channel (again after every reconnect, from its cursor). */
  subscribe(channel) {
    return new Promise((resolve, reject) => {
      const sub = this.channels.get(channel) || { waiters: [], sent: false };
      sub.waiters.push({ resolve, reject });
      this.channels.set(channel, sub);
      this.sendSubscribe(channel);
    });
  }

  unsubscribe(channel) {
    const sub = this.channels.get(channel);
    this.channels.delete(channel);
    this.store.delete(`channel.${this.o.userId}.${channel}`);
    if (sub) for (const w of sub.waiters) w.reject(new SwitchboardError("unsubscribed", channel));
    this.write({ type: "unsubscribe", channel });
  }

  /**
   * The presence of `users` (your contacts: users you share a conversation
   * with, or who wrote to you). With `watch`, a `presence` event whenever
   * one comes online or goes offline, renewed after every reconnect.
   */
  presence(users, { watch = false } = {}) {
    if (watch) for (const u of users) this.watched.add(u);
    return this.ask({ type: "presence", users, watch }).then((s) => s.users);
  }

  /** No more `presence` events about `users`. */
  unwatch(users) {
    for (const u of users) this.watched.delete(u);
    this.write({ type: "unwatch", users });
  }

  /** One page of a presence channel's users (you must be subscribed to it). */
  channelPresence(channel, { after, limit } = {}) {
    const frame = { type: "channel_presence", channel };
    if (after) frame.after = after;
    if (limit) frame.limit = limit;
    return this.ask(frame);
  }

  /** A question answered by the current session (refused `unavailable` if it ends first). */
  ask(frame) {
    return new Promise((resolve, reject) => {
      const id = `presence:${++this.nextId}`;
      if (!this.write({ ...frame, id })) {
        reject(new SwitchboardError("unavailable", "not connected; ask again"));
        return;
      }
      this.asks.set(id, { resolve, reject });
    });
  }

  write(frame) {
    if (!this.ws || this.ws.readyState !== 1 || this.state === "connecting") return false;
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
    return true;
  }

  flushPending() {
    for (const p of this.pending.values()) if (!p.sent) p.sent = this.write(p.frame);
  }

  sendSubscribe(channel) {
    const sub = this.channels.get(channel);
    if (!sub) return;
    const frame = { type: "subscribe", id: `sub:${channel}`, channel };
    const cursor = this.channelCursor(channel);
    if (cursor) frame.cursor = cursor;
    sub.sent = this.write(frame);
  }

  // ---- the connection loop ----

  async open(redirect) {
    if (this.stopped) return;
    this.setState("connecting");
    let target = redirect;
    if (!target) {
      const gone = this.suspect;
      this.suspect = null;
      try {
        target = await this.api.route(this.o.userId, gone ? { unreachable: gone, waitMs: REPORT_WAIT_MS } : {});
      } catch (e) {
        this.emit("error", e);
        return this.retry();
      }
      // The same server again (it answered the coordinator's check, or the
      // map did not move in time): back off before trying it.
      if (gone && target.server_id === gone) {
        const wait = this.delay * (1 + Math.random() / 2);
        this.delay = Math.min(this.delay * 2, this.o.maxBackoffMs);
        await new Promise((resolve) => { this.timer = setTimeout(resolve, wait); });
      }
    }
    if (this.stopped) return;
    this.target = target;
    const ws = new this.WebSocket(target.ws_url);
    this.ws = ws;
    this.redirect = null;
    ws.onopen = () => {
      const hello = { type: "hello", token: this.token, device_id: this.deviceId };
      if (target.epoch !== undefined) hello.epoch = target.epoch;
      if (this.cursor) hello.cursor = this.cursor;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.heard = Date.now();
      let f;
      try { f = JSON.parse(typeof ev.data === "string" ? ev.data : String(ev.data)); } catch (e) { return this.emit("error", e); }
      this.onFrame(f);
    };
    ws.onerror = () => {};
    ws.onclose = (ev) => { if (this.ws === ws) this.onClose(ev.code); };
    // A server that accepts but never answers (crashed mid-way, a stale
    // route) must not hold the client: no welcome in time is a failure.
    clearTimeout(this.helloTimer);
    this.helloTimer = setTimeout(() => {
      if (this.ws !== ws || this.state !== "connecting") return;
      this.ws = null;
      try { ws.close(); } catch (_) { /* already closing */ }
      this.onClose(1006);
    }, this.o.connectTimeoutMs);
  }

  /** Reconnects after `delay` (plus up to 50% jitter), doubling it. */
  retry() {
    if (this.stopped) return;
    const wait = this.delay * (1 + Math.random() / 2);
    this.delay = Math.min(this.delay * 2, this.o.maxBackoffMs);
    this.timer = setTimeout(() => this.open(null), wait);
  }

  async onClose(code) {
    this.ws = null;
    // The refresh timer keeps running while disconnected: the next hello
    // then carries the fresh token instead of one that expired meanwhile.
    clearTimeout(this.helloTimer);
    clearTimeout(this.liveTimer);
    for (const p of this.pending.values()) p.sent = false;
    for (const c of this.channels.values()) c.sent = false;
    const ended = new SwitchboardError("unavailable", "the connection ended before the answer; ask again");
    for (const a of this.asks.values()) a.reject(ended);
    this.asks.clear();
    this.setState("disconnected", { code });
    if (this.stopped) return;
    if (code === CloseCode.UNAUTHORIZED) {
      const token = this.refreshedAfterRefusal ? null : await this.freshToken();
      this.refreshedAfterRefusal = true;
      if (!token) {
        this.emit("error", new SwitchboardError("unauthorized", "the token was refused"));
        return this.close();
      }
      this.delay = 100;
      return this.open(null);
    }
    if (this.redirect || RESOLVE_AGAIN.has(code)) {
      this.delay = 100;
      const target = this.redirect;
      this.timer = setTimeout(() => this.open(target), 20 + Math.random() * 100);
      return;
    }
    // The server failed (reset, refused, silent): report it on the next
    // lookup, which answers once the map has moved this user elsewhere.
    if (this.target) {
      this.suspect = this.target.server_id;
      this.target = null;
      return this.open(null);
    }
    this.retry();
  }

  async freshToken() {
    if (!this.o.refreshToken) return null;
    try {
      const token = await this.o.refreshToken();
      if (token) {
        this.token = token;
        this.api.token = token;
      }
      return token || null;
    } catch (e) {
      this.emit("error", e);
      return null;
    }
  }

  /** Halfway to `exp`, at most a minute early: `auth` with a fresh token. */
  scheduleRefresh(exp) {
    clearTimeout(this.refreshTimer);
    if (!exp || !this.o.refreshToken) return;
    const left = exp * 1000 - Date.now();
    this.refreshTimer = setTimeout(async () => {
      const token = await this.freshToken();
      if (token) this.write({ type: "auth", token });
    }, Math.max(0, left - Math.min(left / 2, 60000)));
  }

  onFrame(f) {
    switch (f.type) {
      case "welcome": return this.onWelcome(f);
      case "message": return this.onMessage(f);
      case "synced": return this.setState("connected", { synced: true, cursor: f.cursor });
      case "ack": return this.settle(f.client_msg_id, null, f.msg_id);
      case "error": return this.onError(f);
      case "redirect": this.redirect = { server_id: f.server_id, ws_url: f.ws_url, epoch: f.epoch }; return undefined;
      case "authed": return this.scheduleRefresh(f.exp);
      case "subscribed": return this.onSubscribed(f);
      case "presence_state":
      case "channel_presence": return this.onAnswer(f);
      case "presence": return this.emit("presence", f);
      case "join": return this.emit("join", f);
      case "leave": return this.emit("leave", f);
      default: return undefined; // newer frames: ignored by design
    }
  }

  onWelcome(w) {
    clearTimeout(this.helloTimer);
    this.delay = 100;
    this.refreshedAfterRefusal = false;
    this.serverId = w.server_id;
    // Without a resume, live delivery starts at the welcome's cursor: keep
    // it until the first chat message, so an early reconnect still resumes.
    if (!w.resumed) this.store.set(`cursor.${this.o.userId}`, w.cursor);
    this.setState(w.resumed ? "resuming" : "connected", { serverId: w.server_id, resumed: w.resumed });
    this.scheduleRefresh(w.token_exp);
    this.watchLiveness(this.ws, w.ping_ms || 20000);
    this.flushPending();
    for (const channel of this.channels.keys()) this.sendSubscribe(channel);
    const watched = [...this.watched];
    for (let i = 0; i < watched.length; i += 100) {
      this.write({ type: "presence", id: "presence:rewatch", users: watched.slice(i, i + 100), watch: true });
    }
  }

  onAnswer(f) {
    const ask = this.asks.get(f.id);
    if (ask) {
      this.asks.delete(f.id);
      ask.resolve(f);
    } else if (f.type === "presence_state") {
      for (const p of f.users) this.emit("presence", p); // watches renewed after a reconnect
    }
  }

  /**
   * Browsers cannot see WebSocket pings, so the client asks: a `ping` after
   * one ping interval of silence, and a link silent for two is dead (a cut
   * link or a frozen server that TCP would report only minutes later).
   */
  watchLiveness(ws, everyMs) {
    clearTimeout(this.liveTimer);
    const tick = () => {
      if (this.ws !== ws) return;
      const quiet = Date.now() - this.heard;
      if (quiet >= 2 * everyMs) {
        this.ws = null;
        try { ws.close(); } catch (_) { /* already closing */ }
        this.onClose(1006);
        return;
      }
      if (quiet >= everyMs) this.write({ type: "ping" });
      this.liveTimer = setTimeout(tick, everyMs / 2);
    };
    this.liveTimer = setTimeout(tick, everyMs / 2);
  }

  onMessage(m) {
    if (this.seen.add(m.msg_id)) this.emit("message", m);
    else if (m.anycast && m.channel && this.handledIds.has(m.msg_id)) this.handled(m.channel, m.msg_id);
    // Only past what the app has been handed: a resume replays the rest.
    if (m.channel) {
      if (m.cursor && this.channels.has(m.channel)) this.store.set(`channel.${this.o.userId}.${m.channel}`, m.cursor);
    } else if (m.kind === "chat" && m.cursor) {
      this.store.set(`cursor.${this.o.userId}`, m.cursor);
    }
  }

  onSubscribed(s) {
    const sub = this.channels.get(s.channel);
    if (!sub) return;
    this.store.set(`channel.${this.o.userId}.${s.channel}`, s.cursor);
    const value = { channel: s.channel, cursor: s.cursor, recovered: s.recovered };
    for (const w of sub.waiters.splice(0)) w.resolve(value);
    this.emit("subscribed", value);
  }

  settle(clientMsgId, error, msgId) {
    const p = this.pending.get(clientMsgId);
    if (!p) return;
    this.pending.delete(clientMsgId);
    if (error) p.reject(error); else p.resolve(msgId);
  }

  onError(e) {
    const err = new SwitchboardError(e.code, e.message);
    if (typeof e.id === "string" && e.id.startsWith("sub:")) {
      const channel = e.id.slice(4);
      const sub = this.channels.get(channel);
      if (!sub) return;
      if (RETRYABLE.has(e.code)) {
        sub.sent = false;
        setTimeout(() => this.sendSubscribe(channel), 500);
        return;
      }
      this.channels.delete(channel);
      for (const w of sub.waiters) w.reject(err);
      return;
    }
    if (typeof e.id === "string" && e.id.startsWith("presence:")) {
      const ask = this.asks.get(e.id);
      this.asks.delete(e.id);
      if (ask) ask.reject(err);
      return;
    }
    const entry = [...this.pending.entries()].find(([, p]) => p.id === e.id);
    if (!entry) return this.emit("error", err);
    const [clientMsgId, p] = entry;
    if (RETRYABLE.has(e.code)) {
      // Not acknowledged: the same frame (same client_msg_id) again, later.
      p.sent = false;
      setTimeout(() => this.flushPending(), 500 * (1 + Math.random()));
      return;
    }
    this.settle(clientMsgId, err);
  }
}
