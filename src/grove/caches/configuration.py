"""Typed handler settings read from environment variables.

Each handler that needs settings defines a ``Configuration`` subclass of
:class:`HandlerConfiguration` with its own environment prefix. Nothing is read from the
environment at import time; explicit arguments beat the environment.

Settings given explicitly (``Configuration(...)``, ``settings=`` of
:func:`grove.caches.create`, ``--config`` of ``grove-cache``) must name fields: an unknown
one is an error that lists the known ones, so a misspelt setting never leaves a default
in place. Environment variables with a handler's prefix that name no field are ignored:
the environment is shared with other programs and with other versions of this package,
and a collector must not stop over a variable it does not know.
:meth:`HandlerConfiguration.unknown_variables` lists them (``grove-cache doctor`` shows
them).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Annotated, Self

import pydantic
from pydantic_settings import BaseSettings, SettingsConfigDict

from grove.exceptions import ConfigurationException

ExpandedPath = Annotated[str, pydantic.AfterValidator(os.path.expanduser)]
"""A file-system path setting: a leading ``~`` or ``~user`` becomes that home directory,
as a shell would expand it; nothing else is expanded (``$HOME`` stays literal)."""


class HandlerConfiguration(BaseSettings):
    """The base of every handler's ``Configuration``.

    Subclasses set ``model_config = SettingsConfigDict(env_prefix="GROVE_CACHE_<NAME>_")``;
    variable names are case-insensitive.
    """

    # A bad value may be a password or a token: pydantic's error, chained as the cause
    # of ConfigurationException, must not repeat it (tracebacks and logs show causes).
    model_config = SettingsConfigDict(
        case_sensitive=False, extra="forbid", hide_input_in_errors=True
    )

    @classmethod
    def env_name(cls, field: str) -> str:
        """Return the environment variable that sets a field.

        :param field: The field's name, such as ``path``.
        :return: The variable's name, such as ``GROVE_CACHE_LOCAL_FILE_PATH``.
        """
        return (cls._env_prefix() + field).upper()

    @classmethod
    def handler_name(cls) -> str:
        """Name the handler these settings belong to, from the environment prefix.

        :return: For example ``local_file`` for the prefix ``GROVE_CACHE_LOCAL_FILE_``.
        """
        return cls._env_prefix().upper().removeprefix("GROVE_CACHE_").strip("_").lower()

    @classmethod
    def _env_prefix(cls) -> str:
        return str(cls.model_config.get("env_prefix", ""))

    @classmethod
    def from_environment(cls, **overrides: object) -> Self:
        """Read the configuration from the environment.

        :param overrides: Field values that win over the environment.
        :raises ConfigurationException: A variable is missing or invalid, or an override
            names no field; the message names each one.
        :return: The validated configuration.
        """
        return cls.from_settings(overrides)

    @classmethod
    def from_settings(cls, settings: Mapping[str, object], *, label: str | None = None) -> Self:
        """Read the configuration from the environment, with explicit settings winning.

        :param settings: Field values that win over the environment, by field name.
        :param label: How messages name a setting given here, e.g. ``--config`` for
            ``--config path``; by default ``setting 'path'``.
        :raises ConfigurationException: A setting names no field, or a value is missing or
            invalid; the message names each setting or environment variable at fault.
        :return: The validated configuration.
        """
        try:
            return cls(**settings)
        except pydantic.ValidationError as exc:
            raise ConfigurationException(
                cls.describe_errors(exc, given=settings.keys(), label=label)
            ) from exc

    @classmethod
    def describe_errors(
        cls,
        exc: pydantic.ValidationError,
        *,
        given: Collection[str] = (),
        label: str | None = None,
    ) -> str:
        """Turn a validation error into one line that names where each bad value came from.

        :param exc: The error pydantic raised while validating this configuration.
        :param given: The fields that were given explicitly rather than read from the
            environment.
        :param label: How to name a given field (see :meth:`from_settings`).
        :return: For example ``GROVE_CACHE_LOCAL_FILE_PATH is required``, or
            ``unknown setting 'fsynk' for local_file; known: path, fsync``.
        """
        known = f"for {cls.handler_name()}; known: {', '.join(cls.model_fields)}"
        unknown, problems = [], []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "?"
            if error["type"] == "extra_forbidden":
                unknown.append(
                    f"{label} {field}: unknown setting {known}"
                    if label
                    else f"unknown setting {field!r} {known}"
                )
            elif error["loc"] and str(error["loc"][0]) in given:
                named = f"{label} {field}" if label else f"setting {field!r}"
                problems.append(f"{named}: {error['msg']}")
            elif error["type"] == "missing":
                problems.append(f"{cls.env_name(field)} is required")
            else:
                problems.append(f"{cls.env_name(field)}: {error['msg']}")
        # An unknown setting is most often the misspelt name of a missing one: say it first.
        return "; ".join(unknown + problems)

    @classmethod
    def unknown_variables(cls, environ: Mapping[str, str] | None = None) -> list[str]:
        """List the environment variables with this prefix that name no field (ignored).

        :param environ: The environment to look at; ``os.environ`` by default.
        :return: Their names as they are spelt in the environment, sorted.
        """
        prefix = cls._env_prefix().upper()
        if not prefix:
            return []
        known = {cls.env_name(field) for field in cls.model_fields}
        return sorted(
            name
            for name in (os.environ if environ is None else environ)
            if name.upper().startswith(prefix) and name.upper() not in known
        )


class _Selection(BaseSettings):
    """The handler selection, ``GROVE_CACHE_HANDLER``, read as every handler setting is."""

    model_config = SettingsConfigDict(env_prefix="GROVE_CACHE_", case_sensitive=False)

    handler: str = ""


def handler_from_environment() -> str | None:
    """Return the handler named by ``GROVE_CACHE_HANDLER`` (the variable's name in any case).

    Handler names themselves are exact: ``Local_File`` names no handler.

    :return: The name, stripped of surrounding blanks, or ``None`` when unset or blank.
    """
    return _Selection().handler.strip() or None
