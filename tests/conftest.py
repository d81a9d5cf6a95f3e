"""Shared test setup: the conformance suite's report, pytester, moto and PostgreSQL."""

pytest_plugins = ["grove.caches.testing", "pytester", "moto_server", "postgresql_server"]
