// Switchboard browser demo: DOM code only. Everything a client must do —
// resolve, resume, dedupe, retry, refresh, resubscribe — is the SDK's
// (clients/js/switchboard.js, served beside this page).
import { Client } from "./switchboard.js";

const $ = (id) => document.getElementById(id);
let client = null;
let user = null;

function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(li);
}

function setStatus(text) { $("status").textContent = text; }

function item(parts, classes) {
  const li = document.createElement("li");
  li.classList.add(...classes.filter(Boolean));
  for (const [cls, text] of parts) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    li.append(span);
  }
  return li;
}

function text(body) {
  return body && typeof body.text === "string" ? body.text : JSON.stringify(body);
}

function showMessage(m) {
  if (m.channel) {
    const li = item([["", `${m.channel} ${m.from}: ${text(m.body)}`]], [m.replay && "replay"]);
    $("channel-messages").append(li);
    return;
  }
  const li = item([["from", m.from], ["conv", m.conversation_id], ["text", text(m.body)]],
    [m.replay && "replay", m.from === user && "mine"]);
  li.dataset.msgId = m.msg_id;
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
}

async function loadConversations() {
  try {
    const body = await client.api.conversations(await client.api.base(user));
    const ul = $("conversations");
    ul.replaceChildren();
    const contacts = new Set();
    for (const c of body.conversations || []) {
      const li = document.createElement("li");
      li.textContent = `#${c.conversation_id} (${c.members.join(", ")})`;
      ul.append(li);
      for (const m of c.members) if (m !== user) contacts.add(m);
    }
    watchContacts([...contacts]);
  } catch (e) { log(`conversations: ${e.message}`); }
}

// Contacts with an online dot: watched, so the dot follows them live.
async function watchContacts(contacts) {
  if (!contacts.length) return;
  try {
    for (const p of await client.presence(contacts.slice(0, 100), { watch: true })) showPresence(p);
  } catch (e) { log(`presence: ${e.message}`); }
}

function showPresence(p) {
  const ul = $("contacts");
  let li = [...ul.children].find((x) => x.dataset.user === p.user);
  if (!li) { li = document.createElement("li"); li.dataset.user = p.user; ul.append(li); }
  li.className = p.online ? "online" : "offline";
  const seen = !p.online && p.last_seen_ms ? ` (last seen ${new Date(p.last_seen_ms).toLocaleTimeString()})` : "";
  li.textContent = `${p.online ? "●" : "○"} ${p.user}${seen}`;
}

function onState(s) {
  if (s.state === "connected" || s.state === "resuming") {
    if (s.serverId) {
      setStatus(`connected as ${user} to ${s.serverId}${s.resumed ? " (resumed)" : ""}`);
      log(`welcome from ${s.serverId}, resumed: ${Boolean(s.resumed)}`);
      loadConversations();
    }
  } else if (s.state === "disconnected" && s.code) {
    setStatus(`disconnected (${s.code}), reconnecting…`);
    log(`closed with ${s.code}`);
  }
}

// Users subscribed to each presence channel (absent: not a presence channel).
const watching = new Map();

function channelItem(channel) {
  const ul = $("channels");
  let li = [...ul.children].find((x) => x.dataset.channel === channel);
  if (!li) { li = document.createElement("li"); li.dataset.channel = channel; ul.append(li); }
  return li;
}

function showChannel(channel) {
  const li = channelItem(channel);
  const users = watching.get(channel);
  li.textContent = `${channel} (recovered: ${li.dataset.recovered})${users ? ` · ${users.size} watching` : ""}`;
}

async function onSubscribed(s) {
  log(`subscribed to ${s.channel} (recovered: ${s.recovered})`);
  channelItem(s.channel).dataset.recovered = s.recovered;
  showChannel(s.channel);
  try {
    const users = new Set();
    let page = { next_after: undefined };
    do {
      page = await client.channelPresence(s.channel, { after: page.next_after });
      for (const u of page.users) users.add(u);
    } while (page.next_after);
    watching.set(s.channel, users);
  } catch (e) {
    if (e.code !== "invalid_field") log(`channel presence: ${e.message}`);
  }
  showChannel(s.channel);
}

function onMembership(joined) {
  return (m) => {
    const users = watching.get(m.channel);
    if (!users) return;
    if (joined) users.add(m.user); else users.delete(m.user);
    showChannel(m.channel);
  };
}

function send(event) {
  event.preventDefault();
  const to = $("to").value.trim(), body = $("text").value;
  if (!to || !body || !client) return;
  const target = to.startsWith("#") ? { conversation: to.slice(1) } : { user: to };
  client.send(target, { text: body }).catch((e) => log(`error ${e.code}: ${e.message}`));
  $("text").value = "";
}

function subscribe(event) {
  event.preventDefault();
  const channel = $("channel").value.trim();
  if (!channel || !client) return;
  client.subscribe(channel).catch((e) => log(`error ${e.code}: ${e.message}`));
  $("channel").value = "";
}

// The demo's token refresh reads the token field: paste a fresh token there.
async function refreshToken() {
  const t = $("token").value.trim();
  if (t && t !== client.token) return t;
  log("token expires soon: paste a fresh one into the token field");
  return null;
}

function login(event) {
  if (event) event.preventDefault();
  user = $("user").value.trim();
  const token = $("token").value.trim();
  if (!user || !token) { setStatus("enter a user and a token"); return; }
  if (client) client.close();
  client = new Client({ coordinators: $("coordinator").value.trim(), userId: user, token, refreshToken });
  client.on("message", showMessage);
  client.on("state", onState);
  client.on("subscribed", onSubscribed);
  client.on("presence", showPresence);
  client.on("join", onMembership(true));
  client.on("leave", onMembership(false));
  client.on("error", (e) => log(`error: ${e.message}`));
  setStatus("connecting…");
  client.connect();
}

$("login-form").addEventListener("submit", login);
$("send-form").addEventListener("submit", send);
$("subscribe-form").addEventListener("submit", subscribe);
const params = new URLSearchParams(location.search);
for (const key of ["coordinator", "user", "token"]) if (params.get(key)) $(key).value = params.get(key);
if (params.get("user") && params.get("token")) login();
