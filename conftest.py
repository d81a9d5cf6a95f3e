"""Shared test setup: the conformance suite's report, pytester, moto and PostgreSQL."""

pytest_plugins = [
    "grove.caches.testing",
    "pytester",
    "tests.moto_server",
    "tests.postgresql_server",
]
