// Switchboard browser demo: a small client with the same behaviour as the
// Rust one — resolve through the coordinator, hello with the last cursor,
// follow redirects and 4004/4005/4006 closes by resuming, drop duplicate
// msg_ids, resend unacknowledged messages with the same client_msg_id, and
// subscribe to channels again after every reconnect from their last cursor.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  user: null, token: null, coordinator: null, device: null,
  ws: null, next: null, cursor: null, delay: 250, stopped: true,
  seen: new Set(), pending: new Map(), requestId: 0,
  // channel name -> its last cursor (null before the first `subscribed`)
  channels: new Map(),
};

function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(li);
}

function setStatus(text) { $("status").textContent = text; }

function httpBase(wsUrl) {
  return wsUrl.replace(/^ws/, "http").replace(/\/v1\/ws$/, "");
}

async function route() {
  const r = await fetch(`${state.coordinator}/v1/route?user_id=${encodeURIComponent(state.user)}`);
  if (!r.ok) throw new Error(`route: HTTP ${r.status}`);
  return (await r.json()).ws_url;
}

async function loadConversations(wsUrl) {
  try {
    const r = await fetch(`${httpBase(wsUrl)}/v1/conversations`, { headers: { authorization: `Bearer ${state.token}` } });
    const body = await r.json();
    const ul = $("conversations");
    ul.replaceChildren();
    for (const c of body.conversations || []) {
      const li = document.createElement("li");
      li.textContent = `#${c.conversation_id} (${c.members.join(", ")})`;
      li.dataset.conversation = c.conversation_id;
      ul.append(li);
    }
  } catch (e) { log(`conversations: ${e}`); }
}

function showPublication(m) {
  if (m.cursor && state.channels.has(m.channel)) state.channels.set(m.channel, m.cursor);
  if (state.seen.has(m.msg_id)) return;
  state.seen.add(m.msg_id);
  const li = document.createElement("li");
  li.dataset.msgId = m.msg_id;
  if (m.replay) li.classList.add("replay");
  const text = m.body && typeof m.body.text === "string" ? m.body.text : JSON.stringify(m.body);
  li.textContent = `${m.channel} ${m.from}: ${text}`;
  $("channel-messages").append(li);
}

function subscribeFrame(channel) {
  const frame = { type: "subscribe", id: `sub:${channel}`, channel };
  const cursor = state.channels.get(channel);
  if (cursor) frame.cursor = cursor;
  return JSON.stringify(frame);
}

function subscribe(event) {
  event.preventDefault();
  const channel = $("channel").value.trim();
  if (!channel || state.channels.has(channel)) return;
  state.channels.set(channel, null);
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(subscribeFrame(channel));
  $("channel").value = "";
}

function onSubscribed(f) {
  if (!state.channels.has(f.channel)) return;
  state.channels.set(f.channel, f.cursor);
  log(`subscribed to ${f.channel} (recovered: ${f.recovered})`);
  const ul = $("channels");
  let li = [...ul.children].find((x) => x.dataset.channel === f.channel);
  if (!li) { li = document.createElement("li"); li.dataset.channel = f.channel; ul.append(li); }
  li.textContent = `${f.channel} (recovered: ${f.recovered})`;
}

function showMessage(m) {
  if (m.channel) return showPublication(m);
  if (m.kind === "chat" && m.cursor) {
    state.cursor = m.cursor;
    localStorage.setItem(`switchboard.cursor.${state.user}`, m.cursor);
  }
  if (state.seen.has(m.msg_id)) return;
  state.seen.add(m.msg_id);
  const li = document.createElement("li");
  li.dataset.msgId = m.msg_id;
  if (m.replay) li.classList.add("replay");
  if (m.from === state.user) li.classList.add("mine");
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = m.from;
  const conv = document.createElement("span");
  conv.className = "conv";
  conv.textContent = m.conversation_id;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = m.body && typeof m.body.text === "string" ? m.body.text : JSON.stringify(m.body);
  li.append(from, conv, text);
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
}

function onFrame(f, wsUrl) {
  switch (f.type) {
    case "welcome":
      state.delay = 250;
      setStatus(`connected as ${f.user_id} to ${f.server_id}${f.resumed ? " (resumed)" : ""}`);
      log(`welcome from ${f.server_id}, resumed: ${f.resumed}`);
      for (const frame of state.pending.values()) state.ws.send(frame);
      for (const channel of state.channels.keys()) state.ws.send(subscribeFrame(channel));
      loadConversations(wsUrl);
      scheduleRefresh(f.token_exp);
      break;
    case "authed": log(`token refreshed, valid until ${new Date(f.exp * 1000).toLocaleTimeString()}`); scheduleRefresh(f.exp); break;
    case "message": showMessage(f); break;
    case "synced": log(`synced at ${f.cursor}`); break;
    case "subscribed": onSubscribed(f); break;
    case "ack": state.pending.delete(f.client_msg_id); break;
    case "redirect": state.next = f.ws_url; log(`redirected to ${f.server_id}`); break;
    case "error":
      log(`error ${f.code}: ${f.message}`);
      if (typeof f.id === "string" && f.id.startsWith("sub:")) {
        const channel = f.id.slice(4);
        // Not open yet on this server: ask again shortly; refused: forget it.
        if (f.code === "unavailable") setTimeout(() => state.ws && state.ws.readyState === WebSocket.OPEN && state.ws.send(subscribeFrame(channel)), 500);
        else state.channels.delete(channel);
        break;
      }
      if (f.code !== "unavailable" && f.code !== "rate_limited") {
        for (const [k, v] of state.pending) if (JSON.parse(v).id === f.id) state.pending.delete(k);
      }
      break;
  }
}

// Token refresh through a callback: halfway to expiry (at most a minute
// early) the demo asks `refreshToken` for a fresh token and sends `auth`.
// The demo's callback reads the token field: paste a fresh token there.
async function refreshToken() {
  const t = $("token").value.trim();
  return t && t !== state.token ? t : null;
}

function scheduleRefresh(exp) {
  clearTimeout(state.refreshTimer);
  if (!exp) return;
  const left = exp * 1000 - Date.now();
  state.refreshTimer = setTimeout(async () => {
    const token = await refreshToken();
    if (!token) { log("token expires soon: paste a fresh one into the token field"); return scheduleRefresh(exp); }
    state.token = token;
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify({ type: "auth", token }));
  }, Math.max(1000, left - Math.min(left / 2, 60000)));
}

async function connect() {
  if (state.stopped) return;
  let url = state.next;
  state.next = null;
  try {
    url = url || await route();
  } catch (e) {
    return retry(`cannot resolve: ${e.message}`);
  }
  const ws = new WebSocket(url);
  state.ws = ws;
  ws.onopen = () => {
    const hello = { type: "hello", token: state.token, device_id: state.device };
    if (state.cursor) hello.cursor = state.cursor;
    ws.send(JSON.stringify(hello));
  };
  ws.onmessage = (ev) => { try { onFrame(JSON.parse(ev.data), url); } catch (e) { log(`bad frame: ${e}`); } };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    clearTimeout(state.refreshTimer);
    setStatus(`disconnected (${ev.code}), reconnecting…`);
    log(`closed with ${ev.code}`);
    if (ev.code === 4001) {
      refreshToken().then((token) => {
        if (token) { state.token = token; state.delay = 250; setTimeout(connect, 20); return; }
        state.stopped = true; setStatus("unauthorized: the token expired or is invalid; paste a fresh one");
      });
      return;
    }
    if ([4004, 4005, 4006].includes(ev.code) || state.next) { state.delay = 250; setTimeout(connect, 20 + Math.random() * 200); }
    else retry("connection lost");
  };
}

function retry(why) {
  log(`${why}; retrying in ${state.delay} ms`);
  setTimeout(connect, state.delay * (1 + Math.random() / 2));
  state.delay = Math.min(state.delay * 2, 5000);
}

function send(event) {
  event.preventDefault();
  const to = $("to").value.trim(), text = $("text").value;
  if (!to || !text || !state.ws) return;
  const target = to.startsWith("#") ? { conversation: to.slice(1) } : { user: to };
  const clientMsgId = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  const frame = JSON.stringify({ type: "send", id: ++state.requestId, client_msg_id: clientMsgId, to: target, body: { text } });
  state.pending.set(clientMsgId, frame);
  if (state.ws.readyState === WebSocket.OPEN) state.ws.send(frame);
  $("text").value = "";
}

function login(event) {
  if (event) event.preventDefault();
  state.user = $("user").value.trim();
  state.token = $("token").value.trim();
  state.coordinator = $("coordinator").value.trim().replace(/\/$/, "");
  if (!state.user || !state.token) { setStatus("enter a user and a token"); return; }
  state.device = localStorage.getItem(`switchboard.device.${state.user}`) || `web-${Math.random().toString(36).slice(2, 10)}`;
  localStorage.setItem(`switchboard.device.${state.user}`, state.device);
  state.cursor = localStorage.getItem(`switchboard.cursor.${state.user}`);
  state.stopped = false;
  setStatus("connecting…");
  connect();
}

$("login-form").addEventListener("submit", login);
$("send-form").addEventListener("submit", send);
$("subscribe-form").addEventListener("submit", subscribe);
const params = new URLSearchParams(location.search);
for (const key of ["coordinator", "user", "token"]) if (params.get(key)) $(key).value = params.get(key);
if (params.get("user") && params.get("token")) login();
