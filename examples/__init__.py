"""Runnable examples: a collector, an operator session, a third-party handler."""
