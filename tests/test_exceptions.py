"""The exception names and hierarchy are upstream Grove's."""

import pytest

from grove import exceptions


@pytest.mark.parametrize(
    "name",
    ["ConfigurationException", "NotFoundException", "AccessException", "DataFormatException"],
)
def test_every_exception_is_a_grove_exception(name: str) -> None:
    error_class = getattr(exceptions, name)
    assert issubclass(error_class, exceptions.GroveException)
    assert issubclass(exceptions.GroveException, Exception)
