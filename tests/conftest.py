"""Shared test setup: the conformance suite's report and pytester for testing the suite."""

pytest_plugins = ["grove.caches.testing", "pytester"]
