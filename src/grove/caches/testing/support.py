"""What every part of the suite shares: the contract's sizes, hostile keys, fresh keys."""

from __future__ import annotations

import base64
import random
import uuid
from typing import Any

from grove.caches import BaseCache

CONTRACT_VALUE_BYTES = 4 * 1024 * 1024
"""The value size, in bytes of UTF-8, that every built-in handler stores."""

HOSTILE_KEYS: tuple[str, ...] = (
    "plain",
    "with space",
    "a/b",
    "/leading-slash",
    "trailing-slash/",
    "back\\slash",
    ".",
    "..",
    "../escape",
    "../../../../../../tmp/escape",
    ".hidden",
    "%2F",
    "%",
    "100%",
    "nul\x00byte",
    "new\nline",
    "tab\tand\rreturn",
    "CaseSensitive",
    "casesensitive",
    "emoji \U0001f332",
    "\u00e9t\u00e9",
    "e\u0301te\u0301",
    "CON",
    "aux.txt",
    "name.cache",
    "~",
    "*?<>|:\"'",
    "\u202eright-to-left",
)
"""Keys that break naive storage layouts: path separators, dots, escapes, control
characters, case-only differences, Unicode normalisation variants, reserved names."""

declared_limits: dict[str, int] = {}
"""Value limits below the contract that handlers declared, by handler class."""


def fresh_pk(label: str = "conformance") -> str:
    """Return a partition key that no other test uses.

    :param label: What the key is for, at its start.
    """
    return f"{label}.{uuid.uuid4().hex}"


def random_text(size: int, seed: int) -> str:
    """Return incompressible ASCII text of exactly ``size`` characters."""
    raw = random.Random(seed).randbytes(size * 3 // 4 + 3)
    return base64.b64encode(raw).decode("ascii")[:size]


def limit_report(handler_class: type[BaseCache], limit: int) -> str:
    """Describe a handler's declared value limit against the contract's.

    :param handler_class: The handler's class.
    :param limit: Its ``max_value_bytes``.
    :return: One line naming the handler and both sizes.
    """
    return (
        f"{handler_class.__module__}.{handler_class.__qualname__} declares "
        f"max_value_bytes={limit}, below the contract's {CONTRACT_VALUE_BYTES}"
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """List the value limits that handlers declared below the contract.

    :param terminalreporter: pytest's terminal reporter.
    """
    if declared_limits:
        terminalreporter.section("grove.caches conformance: declared limits")
        for name, limit in sorted(declared_limits.items()):
            terminalreporter.write_line(f"{name}: max_value_bytes={limit} (contract: 4 MiB)")
