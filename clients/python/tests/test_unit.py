"""The parts of the client that need no server."""

import base64
import hashlib
import hmac
import json

from switchboard import mint_dev_token, publication
from switchboard.api import backoff_delays, http_base, split_urls, token_subject
from switchboard.client import _moves_forward, _Seen


def _part(s: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))


def test_dev_tokens_are_hs256_with_the_grants():
    token = mint_dev_token("0123456789abcdef", "alice", 60, channels=["ch:*"])
    head, claims, sig = token.split(".")
    assert _part(head) == {"alg": "HS256", "typ": "JWT"}
    assert _part(claims)["sub"] == "alice" and _part(claims)["channels"] == ["ch:*"]
    mac = hmac.new(b"0123456789abcdef", f"{head}.{claims}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(mac).rstrip(b"=").decode() == sig
    assert token_subject(token) == "alice"
    assert token_subject("an-api-key") is None


def test_urls_and_publications():
    assert split_urls("http://a:1/, http://b:2") == ["http://a:1", "http://b:2"]
    assert http_base("ws://127.0.0.1:9/v1/ws") == "http://127.0.0.1:9"
    assert http_base("wss://x.example/v1/ws") == "https://x.example"
    p = publication({"channel": "ch:jobs"}, {"n": 1}, sender="system:a", anycast=True, key="k")
    assert p["anycast"] is True and p["key"] == "k" and p["from"] == "system:a"
    assert publication({"users": ["b"]}, 1, sender="system:a", idempotency_key="x")["idempotency_key"] == "x"


def test_backoff_doubles_to_its_cap_with_jitter():
    d = backoff_delays(0.1, 1.0)
    got = [next(d) for _ in range(8)]
    assert 0.05 <= got[0] <= 0.15
    assert all(0.5 <= g <= 1.5 for g in got[5:]), got


def test_dedupe_and_cursors():
    seen = _Seen(2)
    assert seen.add("a") and not seen.add("a")
    assert seen.add("b") and seen.add("c") and seen.add("a"), "the oldest is forgotten"
    assert _moves_forward(None, "e:5")
    assert _moves_forward("e:5", "e:6") and not _moves_forward("e:6", "e:5")
    assert _moves_forward("e:9", "f:1"), "a new log epoch replaces"


def test_async_api_runs_the_same_calls_and_raises_the_same_errors():
    import asyncio

    import pytest

    from switchboard import AsyncApi, SwitchboardError
    from switchboard.api import _retry_after

    # Nothing listens on port 1: a transport error, after no retries.
    api = AsyncApi("http://127.0.0.1:1", "t", retries=0, timeout=2)
    with pytest.raises(SwitchboardError) as e:
        asyncio.run(api.route("alice"))
    assert e.value.code == "transport" and e.value.retryable
    assert api.coordinators == ["http://127.0.0.1:1"], "attributes pass through"
    assert _retry_after("3") == 3.0 and _retry_after("soon") is None and _retry_after(None) is None
