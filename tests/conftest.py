"""Shared test setup: the conformance suite's report, pytester, and the moto server."""

pytest_plugins = ["grove.caches.testing", "pytester", "moto_server"]
