"""The HTTP API against the real stack: publish idempotency, history
paging, error codes, routes."""

import uuid

import pytest

from switchboard import Api, SwitchboardError, mint_dev_token, publication


def _api(env, user: str) -> Api:
    return Api(env["SB_COORDINATORS"], mint_dev_token(env["SB_JWT_SECRET"], user, 600))


def test_a_retried_publication_is_the_same_message(env):
    api = Api(env["SB_COORDINATORS"], env["SB_API_KEY"])
    key = f"order-{uuid.uuid4().hex}"
    first = api.publish({"users": ["pyuser"]}, {"shipped": True}, sender="system:orders", idempotency_key=key)
    again = api.publish({"users": ["pyuser"]}, {"shipped": True}, sender="system:orders", idempotency_key=key)
    other = api.publish({"users": ["pyuser"]}, {"shipped": True}, sender="system:orders")
    assert first == again and other != first
    results = api.publish_batch(
        [publication({"users": ["pyuser"]}, 1, sender="system:orders", idempotency_key=key),
         publication({"users": ["pyuser"]}, 1, sender="not-a-system-id")]
    )
    assert results[0] == {"msg_id": first}, results
    assert results[1]["error"]["code"] == "invalid_field", results


def test_history_pages_back_to_the_first_message(env):
    alice, bob = _api(env, "pyalice"), _api(env, "pybob")
    room = f"py-{uuid.uuid4().hex[:8]}"
    alice.create_conversation(["pybob"], conversation_id=room)
    sent = [alice.send({"conversation": room}, {"i": i}, client_msg_id=f"h{i}") for i in range(25)]
    pages = []
    before = None
    while True:
        page = bob.history(room, before=before, limit=10)
        pages.append(page["messages"])
        before = page.get("next_before")
        if not before:
            break
    got = [m["msg_id"] for p in pages for m in p]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert got == list(reversed(sent)), "newest first, each once"
    assert [m["msg_id"] for m in bob.history_all(room, page_size=7)] == got
    assert any(c["conversation_id"] == room for c in bob.conversations())


def test_refusals_carry_the_protocol_code(env):
    stranger = _api(env, "pystranger")
    with pytest.raises(SwitchboardError) as e:
        stranger.history("no-such-room")
    assert e.value.code == "not_found" and e.value.status == 404
    with pytest.raises(SwitchboardError) as e:
        stranger.send({"user": "pystranger"}, "me")
    assert e.value.code == "invalid_field" and e.value.status == 400
    bad = Api(env["SB_COORDINATORS"], "not-a-token")
    with pytest.raises(SwitchboardError) as e:
        bad.conversations()
    assert e.value.code == "unauthorized" and e.value.status == 401
    route = stranger.route("pystranger")
    assert route["ws_url"].startswith("ws://") and route["server_id"]
