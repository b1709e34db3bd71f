// The SDK's anycast in Node, run by tests/it/js_sdk.rs: two workers on
// two servers subscribe to a presence channel and answer `handled` for
// every anycast message; a publisher sends 20 without a key and 10 with
// one. Prints one "result {...}" line for the Rust test to check.
import * as sb from "../switchboard.js";

const env = process.env;
const client = (userId, token) => new sb.Client({
  coordinators: env.SB_COORDINATORS, userId, token,
  cursorStore: new sb.MemoryCursorStore(), maxBackoffMs: 1000,
});
const wait = (ms) => new Promise((r) => setTimeout(r, ms));

const result = { handled: {}, keyed: {} };
try {
  const workers = [env.SB_ALICE, env.SB_BOB].map((u) => {
    const c = client(u, env[`SB_${u === env.SB_ALICE ? "ALICE" : "BOB"}_TOKEN`]);
    c.on("message", (m) => {
      if (!m.anycast) return;
      c.handled(m.channel, m.msg_id);
      const tally = m.body.key ? result.keyed : result.handled;
      (tally[m.msg_id] ??= []).push(u);
    });
    c.connect();
    return c;
  });
  for (const w of workers) await w.subscribe(env.SB_POOL);
  const deadline = Date.now() + 20000;
  let page = { users: [] };
  while (page.users.length < 2 && Date.now() < deadline) {
    page = await workers[0].channelPresence(env.SB_POOL, { limit: 10 });
    if (page.users.length < 2) await wait(100);
  }
  const publisher = client(env.SB_PUB, env.SB_PUB_TOKEN);
  publisher.connect();
  const sent = [];
  for (let i = 0; i < 20; i++) sent.push(await publisher.anycast(env.SB_POOL, { i }));
  for (let i = 0; i < 10; i++) sent.push(await publisher.anycast(env.SB_POOL, { key: "k", i }, { key: "order-7" }));
  const seen = () => Object.keys(result.handled).length + Object.keys(result.keyed).length;
  const until = Date.now() + 20000;
  while (seen() < sent.length && Date.now() < until) await wait(50);
  await wait(2500); // past the servers' 1 s handle timeout: a missed `handled` shows here
  result.sent = sent.length;
  publisher.close();
  for (const w of workers) w.close();
} catch (e) {
  result.error = String(e);
}
console.log(`result ${JSON.stringify(result)}`);
process.exit(result.error ? 1 : 0);
