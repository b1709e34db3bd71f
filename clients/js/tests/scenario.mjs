// The SDK's end-to-end scenario, run by Node (node.mjs) and by Chromium
// (tests/it/js_sdk.rs injects it into a page): alice sends 200 messages to
// bob while bob's server is drained and then the next one is killed; bob's
// token expires during the run and is refreshed through the callback; ten
// more messages after its expiry must arrive too.
// The Rust test moves the servers when it reads "sent 50" and "sent 120".
//
// `sb` is the switchboard.js module, `env` the stack's coordinates, `say`
// prints one progress line for the driving test. No imports: the browser
// loads this text as a module of its own.

export async function run(sb, env, say) {
  const total = env.messages || 200;
  const store = () => new sb.MemoryCursorStore();
  let refreshes = 0;
  const bob = new sb.Client({
    coordinators: env.coordinators, userId: env.bob, token: env.bobShortToken,
    refreshToken: async () => { refreshes += 1; return env.bobToken; },
    cursorStore: store(), maxBackoffMs: 1000,
  });
  const alice = new sb.Client({
    coordinators: env.coordinators, userId: env.alice, token: env.aliceToken,
    cursorStore: store(), maxBackoffMs: 1000,
  });
  const got = [];
  const states = [];
  bob.on("message", (m) => got.push(m));
  bob.on("state", (s) => states.push(`${s.state}${s.code ? `:${s.code}` : ""}`));
  const up = (c) => new Promise((resolve) => {
    const off = c.on("state", (s) => { if (s.state === "connected") { off(); resolve(); } });
  });
  const both = Promise.all([up(bob), up(alice)]);
  bob.connect();
  alice.connect();
  await both;
  say("ready");
  const acks = [];
  for (let i = 0; i < total; i++) {
    acks.push(alice.send({ user: env.bob }, { i }, { clientMsgId: `m${i}` }));
    if ((i + 1) % 10 === 0) {
      await Promise.all(acks.slice(-10));
      say(`sent ${i + 1}`);
      await new Promise((r) => setTimeout(r, env.pauseMs ?? 60));
    }
  }
  // Past the short token's expiry: the session must still be bob's, on the
  // token the callback gave, and the next messages must still arrive.
  while (Date.now() < env.bobShortExp * 1000 + 1500) await new Promise((r) => setTimeout(r, 100));
  for (let i = total; i < total + 10; i++) acks.push(alice.send({ user: env.bob }, { i }, { clientMsgId: `m${i}` }));
  const ids = await Promise.all(acks);
  const deadline = Date.now() + 60000;
  while (got.length < ids.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const order = got.map((m) => m.body.i);
  const unique = new Set(got.map((m) => m.msg_id));
  const inOrder = order.every((v, k) => k === 0 || v > order[k - 1]);
  const result = {
    sent: ids.length, received: got.length, unique: unique.size,
    missing: ids.filter((id) => !unique.has(id)).length,
    inOrder, refreshes, reconnects: states.filter((s) => s.startsWith("disconnected")).length,
    states: states.slice(0, 40),
  };
  alice.close();
  bob.close();
  say(`result ${JSON.stringify(result)}`);
  return result;
}
