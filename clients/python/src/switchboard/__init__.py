"""Switchboard's Python client (docs/clients.md, "Python").

- ``Api`` / ``AsyncApi``: the HTTP API for backends — publish (with
  idempotency keys), conversations, history, routes.
- ``Client``: an asyncio device connection with resume, dedupe, retried
  sends, token refresh and channel subscriptions.
- ``mint_dev_token``: development tokens only.
"""

from .api import Api, AsyncApi, publication
from .client import Client
from .errors import SwitchboardError
from .tokens import mint_dev_token

__all__ = ["Api", "AsyncApi", "Client", "SwitchboardError", "mint_dev_token", "publication"]
