"""The project's own tests (the shipped conformance suite is grove.caches.testing)."""
