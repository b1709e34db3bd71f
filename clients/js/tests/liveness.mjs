// One device of the SDK for tests/it/half_open.rs: it prints what happens
// (states and message ids, one per line) while the Rust test cuts and heals
// the link to its server, and exits when its stdin closes.
import * as sb from "../switchboard.js";

const client = new sb.Client({
  coordinators: process.env.SB_COORDINATORS,
  userId: process.env.SB_USER,
  token: process.env.SB_TOKEN,
  cursorStore: new sb.MemoryCursorStore(),
  maxBackoffMs: 1000,
});
client.on("message", (m) => console.log(`message ${m.msg_id}`));
client.on("state", (s) => console.log(`state ${s.state}${s.code ? `:${s.code}` : ""}`));
client.connect();
process.stdin.resume();
process.stdin.on("end", () => { client.close(); process.exit(0); });
