// The SDK's presence in Node, run by tests/it/js_sdk.rs: alice watches bob
// (they share a conversation) and both subscribe to a presence channel;
// bob comes online, shows in the channel's listing, leaves the channel and
// goes offline. Prints one "result {...}" line for the Rust test to check.
import * as sb from "../switchboard.js";

const env = process.env;
const client = (userId, token) => new sb.Client({
  coordinators: env.SB_COORDINATORS, userId, token,
  cursorStore: new sb.MemoryCursorStore(), maxBackoffMs: 1000,
});
const until = (c, event, test) => new Promise((resolve) => {
  const off = c.on(event, (v) => { if (test(v)) { off(); resolve(v); } });
});
const up = (c) => until(c, "state", (s) => s.state === "connected");
const within = (ms, p, what) => Promise.race([
  p, new Promise((_, reject) => setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms)),
]);

const result = {};
try {
  const alice = client(env.SB_ALICE, env.SB_ALICE_TOKEN);
  const aliceUp = up(alice);
  alice.connect();
  await aliceUp;
  const first = await alice.presence([env.SB_BOB], { watch: true });
  result.firstOnline = first[0].online;
  const online = until(alice, "presence", (p) => p.user === env.SB_BOB && p.online);
  const bob = client(env.SB_BOB, env.SB_BOB_TOKEN);
  bob.connect();
  result.online = (await within(20000, online, "online")).online;
  await alice.subscribe(env.SB_ROOM);
  await bob.subscribe(env.SB_ROOM);
  const deadline = Date.now() + 10000;
  let page = { users: [] };
  while (page.users.length < 2 && Date.now() < deadline) {
    page = await alice.channelPresence(env.SB_ROOM, { limit: 10 });
    if (page.users.length < 2) await new Promise((r) => setTimeout(r, 100));
  }
  result.listed = page.users;
  const left = until(alice, "leave", (m) => m.user === env.SB_BOB && m.channel === env.SB_ROOM);
  bob.unsubscribe(env.SB_ROOM);
  result.leave = (await within(10000, left, "leave")).user === env.SB_BOB;
  const offline = until(alice, "presence", (p) => p.user === env.SB_BOB && !p.online);
  bob.close();
  const off = await within(20000, offline, "offline");
  result.offline = !off.online;
  result.lastSeen = off.last_seen_ms ?? null;
  try {
    await alice.presence(["nobody-knows-me"]);
    result.strangerRefused = false;
  } catch (e) {
    result.strangerRefused = e.code === "forbidden";
  }
  alice.close();
} catch (e) {
  result.error = String(e);
}
console.log(`result ${JSON.stringify(result)}`);
process.exit(result.error ? 1 : 0);
