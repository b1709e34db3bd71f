"""The JS SDK's scenario in Python: alice sends 200 messages to bob while
bob's server is drained and then the next one is killed (the Rust test
moves the servers when it reads "sent 50" and "sent 120" on stdout); bob's
short token expires during the run and is refreshed through the callback;
ten more messages after its expiry. Every message exactly once, in order."""

import asyncio
import json
import time

from switchboard import Client, mint_dev_token


def say(line: str) -> None:
    print(line, flush=True)


async def scenario(env: dict) -> dict:
    secret, coordinators = env["SB_JWT_SECRET"], env["SB_COORDINATORS"]
    alice_id, bob_id = env["SB_ALICE"], env["SB_BOB"]
    short_ttl, total = 8, 200
    short_exp = time.time() + short_ttl

    async def refresh() -> str:
        return mint_dev_token(secret, bob_id, 3600)

    bob = Client(coordinators, bob_id, mint_dev_token(secret, bob_id, short_ttl), refresh_token=refresh, max_backoff=1.0)
    alice = Client(coordinators, alice_id, mint_dev_token(secret, alice_id, 3600), max_backoff=1.0)
    got: list[dict] = []

    async def receive() -> None:
        async for m in bob.messages():
            got.append(m)

    async with bob, alice:
        reader = asyncio.create_task(receive())
        say("ready")
        sends = []
        for i in range(total):
            sends.append(asyncio.create_task(alice.send({"user": bob_id}, {"i": i}, client_msg_id=f"m{i}")))
            if (i + 1) % 10 == 0:
                await asyncio.gather(*sends[-10:])
                say(f"sent {i + 1}")
                await asyncio.sleep(0.06)
        while time.time() < short_exp + 1.5:
            await asyncio.sleep(0.1)
        for i in range(total, total + 10):
            sends.append(asyncio.create_task(alice.send({"user": bob_id}, {"i": i}, client_msg_id=f"m{i}")))
        ids = await asyncio.gather(*sends)
        deadline = time.time() + 60
        while len(got) < len(ids) and time.time() < deadline:
            await asyncio.sleep(0.05)
        reader.cancel()
        order = [m["body"]["i"] for m in got]
        unique = {m["msg_id"] for m in got}
        return {
            "sent": len(ids),
            "received": len(got),
            "unique": len(unique),
            "missing": len([i for i in ids if i not in unique]),
            "inOrder": all(b > a for a, b in zip(order, order[1:])),
            "refreshes": bob.refreshes,
            "reconnects": len([s for s in bob.states if s.startswith("disconnected")]),
            "states": bob.states[:40],
        }


def test_exactly_once_in_order_across_a_drain_a_crash_and_a_token_refresh(env):
    result = asyncio.run(scenario(env))
    say(f"result {json.dumps(result)}")
    assert result["missing"] == 0 and result["unique"] == result["sent"] == result["received"] == 210, result
    assert result["inOrder"], result
    assert result["refreshes"] >= 1 and result["reconnects"] >= 2, result
