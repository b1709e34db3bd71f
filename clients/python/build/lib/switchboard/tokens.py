"""Development tokens. Never in production: real tokens come from your
token service or identity provider (docs/protocol.md, "Authentication")."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Sequence


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_dev_token(
    secret: str,
    user_id: str,
    ttl_seconds: int = 3600,
    *,
    channels: Sequence[str] = (),
    publish: Sequence[str] = (),
) -> str:
    """An HS256 token for ``user_id`` signed with the servers' development
    secret (``SWITCHBOARD_JWT_SECRET``), with optional channel grants."""
    header = {"alg": "HS256", "typ": "JWT"}
    claims: dict[str, object] = {"sub": user_id, "exp": int(time.time()) + ttl_seconds}
    if channels:
        claims["channels"] = list(channels)
    if publish:
        claims["publish"] = list(publish)
    signing = ".".join(
        _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    mac = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(mac)}"
