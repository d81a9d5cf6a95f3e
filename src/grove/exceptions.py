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
    """A condition of a conditional write or delete was not satisfied.

    A handler that sees the stored value in the same step as the refused condition (at
    no extra request) reports it, so that a caller who wants to retry needs no second
    read:

    - :attr:`current_known` is ``True`` when the handler reported what it saw; then
      :attr:`current` is the stored value, or ``None`` because nothing was stored.
    - :attr:`current_known` is ``False`` when it did not say (handlers that have not
      adopted this, and third-party ones); :attr:`current` is then ``None`` too.

    :attr:`current` can hold a token or a pointer: like every value, it never appears in
    the message or the ``repr``.

    :param args: The message, as for any exception.
    :param current: The stored value seen, ``None`` for none stored or unknown.
    :param current_known: Whether the handler reported what it saw.
    """

    def __init__(self, *args: object, current: str | None = None, current_known: bool = False):
        super().__init__(*args)
        self.current = current
        self.current_known = current_known or current is not None
