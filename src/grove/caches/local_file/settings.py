"""The settings of the local_file handler, and the error of an unreadable entry file."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from grove.caches.configuration import ExpandedPath, HandlerConfiguration

__all__ = ["Configuration", "CorruptEntryError"]


class CorruptEntryError(Exception):
    """An entry file is unreadable: not UTF-8, or a malformed frame.

    The message names the key, never the bytes.
    """


class Configuration(HandlerConfiguration):
    """Defines environment variables used to configure the local file cache handler.

    As an example the field ``path`` is set using the environment variable
    ``GROVE_CACHE_LOCAL_FILE_PATH``.
    """

    model_config = SettingsConfigDict(env_prefix="GROVE_CACHE_LOCAL_FILE_")

    path: ExpandedPath = Field(
        min_length=1, description="The directory holding the cache; created (0700) when missing."
    )
    fsync: bool = Field(
        default=True,
        description="Sync each written file and its directory to disk before returning.",
    )
