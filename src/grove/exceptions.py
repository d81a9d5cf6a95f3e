"""Grove exceptions.

The names match upstream Grove, so code written against Grove catches the same classes.
"""


class GroveException(Exception):  # noqa: N818 - the name is fixed by upstream Grove.
    """The root of every exception raised by Grove."""


class ConfigurationException(GroveException):
    """The configuration is missing or invalid; the message names the setting."""


class NotFoundException(GroveException):
    """The requested entry does not exist."""


class AccessException(GroveException):
    """The storage backend failed: I/O, network, permissions or throttling after retries.

    The message says what failed and where. The driver's own exception is the cause.
    """


class DataFormatException(GroveException):
    """A condition of a conditional write or delete was not satisfied."""
