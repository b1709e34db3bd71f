"""The live tests need a stack: tests/it/python_sdk.rs starts one (the way
`./dev test` does) and passes its coordinates in SB_* variables."""

import os

import pytest


@pytest.fixture
def env() -> dict:
    missing = [k for k in ("SB_COORDINATORS", "SB_JWT_SECRET") if not os.environ.get(k)]
    if missing:
        pytest.fail(f"{missing} not set: run through ./dev test (tests/it/python_sdk.rs)")
    return dict(os.environ)
