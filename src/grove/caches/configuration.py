"""Typed handler settings read from environment variables.

Each handler that needs settings defines a ``Configuration`` subclass of
:class:`HandlerConfiguration` with its own environment prefix. Nothing is read from the
environment at import time; explicit arguments beat the environment.
"""

from __future__ import annotations

from typing import Self

import pydantic
from pydantic_settings import BaseSettings, SettingsConfigDict

from grove.exceptions import ConfigurationException


class HandlerConfiguration(BaseSettings):
    """The base of every handler's ``Configuration``.

    Subclasses set ``model_config = SettingsConfigDict(env_prefix="GROVE_CACHE_<NAME>_")``;
    variable names are case-insensitive.
    """

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    @classmethod
    def env_name(cls, field: str) -> str:
        """Return the environment variable that sets a field.

        :param field: The field's name, such as ``path``.
        :return: The variable's name, such as ``GROVE_CACHE_LOCAL_FILE_PATH``.
        """
        return (str(cls.model_config.get("env_prefix", "")) + field).upper()

    @classmethod
    def from_environment(cls, **overrides: object) -> Self:
        """Read the configuration from the environment.

        :param overrides: Field values that win over the environment.
        :raises ConfigurationException: A variable is missing or invalid; the message
            names each one.
        :return: The validated configuration.
        """
        try:
            return cls(**overrides)
        except pydantic.ValidationError as exc:
            raise ConfigurationException(cls.describe_errors(exc)) from exc

    @classmethod
    def describe_errors(cls, exc: pydantic.ValidationError) -> str:
        """Turn a validation error into one line that names the environment variables.

        :param exc: The error pydantic raised while validating this configuration.
        :return: For example ``GROVE_CACHE_LOCAL_FILE_PATH is required``.
        """
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "?"
            variable = cls.env_name(field)
            if error["type"] == "missing":
                problems.append(f"{variable} is required")
            else:
                problems.append(f"{variable}: {error['msg']}")
        return "; ".join(problems)
