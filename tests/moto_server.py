"""pytest fixtures for a moto server: fake AWS credentials and one server per session.

Registered as a plugin in ``conftest.py``, so any test module can ask for
``moto_endpoint`` (the server's URL, with fake credentials in the environment for the
whole session) or ``dynamodb_table`` (a fresh table on it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from benchmarks.moto_server import UNSET, MotoServer, fake_credentials


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Start one single-threaded moto server for the session, with fake credentials.

    The environment is set for the whole session (worker processes inherit it) and
    restored at the end; the server is stopped by its PID.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in fake_credentials().items():
            patch.setenv(name, value)
        for name in UNSET:
            patch.delenv(name, raising=False)
        with MotoServer() as server:
            yield server.url


@pytest.fixture
def table_name() -> str:
    """A table name no other test uses."""
    return f"grove-{uuid.uuid4().hex[:12]}"
