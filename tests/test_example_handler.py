"""The example handler of the "Writing a handler" guide passes the conformance suite.

The guide includes ``examples/bounded_memory.py`` and ``examples/test_bounded_memory.py``
whole; running the example's tests here keeps what the page shows working.
"""

from examples.test_bounded_memory import (
    TestBoundedMemory,
    test_a_write_beyond_the_limit_is_an_access_error_naming_the_store,
    test_settings_come_from_the_environment,
)

__all__ = [
    "TestBoundedMemory",
    "test_a_write_beyond_the_limit_is_an_access_error_naming_the_store",
    "test_settings_come_from_the_environment",
]
