// Runs scenario.mjs with Node's own WebSocket (`node --experimental-websocket`
// on Node 20, built in from Node 22) and fetch; the stack's coordinates come
// from SB_* environment variables set by the Rust test (tests/it/js_sdk.rs).
import * as sb from "../switchboard.js";
import { run } from "./scenario.mjs";

const env = {
  coordinators: process.env.SB_COORDINATORS,
  alice: process.env.SB_ALICE, aliceToken: process.env.SB_ALICE_TOKEN,
  bob: process.env.SB_BOB, bobToken: process.env.SB_BOB_TOKEN, bobShortToken: process.env.SB_BOB_SHORT_TOKEN,
  bobShortExp: Number(process.env.SB_BOB_SHORT_EXP),
  messages: Number(process.env.SB_MESSAGES || 200),
};
if (typeof globalThis.WebSocket !== "function") {
  console.error("no global WebSocket: run with --experimental-websocket (Node 20) or Node >= 22");
  process.exit(2);
}
const result = await run(sb, env, (line) => console.log(line));
const ok = result.missing === 0 && result.unique === result.sent && result.received === result.sent && result.inOrder;
process.exit(ok ? 0 : 1);
