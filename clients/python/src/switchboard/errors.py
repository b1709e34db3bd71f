"""Errors: the server's ``{"code","message"}`` kept as an exception."""

from __future__ import annotations


class SwitchboardError(Exception):
    """A refusal by Switchboard, or a failure to reach it.

    ``code`` is the protocol's error code (``"unavailable"``, ``"not_member"``,
    ``"forbidden"``, …; docs/protocol.md), ``"transport"`` when no server
    answered, or ``"unauthorized"`` when the session's token was refused.
    ``status`` is the HTTP status when the error came over HTTP.
    """

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.status = status

    @property
    def retryable(self) -> bool:
        """Worth retrying unchanged after a backoff."""
        return self.code in RETRYABLE


RETRYABLE = frozenset({"unavailable", "rate_limited", "transport"})
