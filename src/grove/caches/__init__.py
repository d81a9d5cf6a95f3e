"""Grove cache handlers.

A cache is a key/value store keyed by a partition key (``pk``) and a sort key (``sk``),
holding ``str`` values. Grove keeps its collection pointers, execution locks and
deduplication hashes in one. Handlers are found by name in the ``grove.caches``
entry-point group; :func:`load` picks one, the built-in ones and third-party ones alike.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from importlib.metadata import EntryPoint, entry_points
from typing import ClassVar, NamedTuple, Self

import pydantic
from typing_extensions import override

from grove.caches.configuration import HandlerConfiguration, handler_from_environment
from grove.exceptions import ConfigurationException

__all__ = [
    "DEFAULT_HANDLER",
    "ENTRY_POINT_GROUP",
    "HANDLER_ENV",
    "BaseCache",
    "CacheEntry",
    "Closing",
    "CreatingStorage",
    "Expiring",
    "Listing",
    "Maintaining",
    "create",
    "load",
    "names",
]

ENTRY_POINT_GROUP = "grove.caches"
"""The entry-point group in which handlers are registered, by name."""

HANDLER_ENV = "GROVE_CACHE_HANDLER"
"""The environment variable that names the handler :func:`load` picks."""

DEFAULT_HANDLER = "local_memory"
"""The handler :func:`load` picks when nothing names one."""


class CacheEntry(NamedTuple):
    """One stored entry, as :meth:`BaseCache.entries` yields it."""

    pk: str
    sk: str
    value: str


class BaseCache(abc.ABC):
    """The interface every Grove cache handler implements.

    A handler written against upstream Grove (a subclass implementing :meth:`get`,
    :meth:`set` and :meth:`delete`) keeps working. The built-in handlers derive from
    :class:`grove.caches.atomic.AtomicCache`, which enforces the shared key, value and
    condition rules over a few atomic primitives.

    Optional abilities are types a handler derives from, checked with ``isinstance``:
    :class:`Listing`, :class:`CreatingStorage`, :class:`Maintaining`, :class:`Closing`
    and :class:`Expiring`. A handler with settings names their model in
    :attr:`configuration`; :meth:`from_settings` builds it from explicit settings.
    """

    configuration: ClassVar[type[HandlerConfiguration] | None] = None
    """The model of the handler's settings (read from environment variables with its
    prefix), or ``None`` for a handler without settings."""

    config: HandlerConfiguration | None = None
    """The handler's settings; ``None`` for a handler without settings."""

    max_value_bytes: ClassVar[int | None] = None
    """The largest value, in bytes of UTF-8, that this handler stores; ``None`` when it
    stores any size. The contract asks for at least 4 MiB; a handler that declares less
    refuses larger values with ``ValueError``, and the conformance suite reports it."""

    def __init__(self, config: HandlerConfiguration | None = None) -> None:
        """Keep the settings, read from the environment when none are given.

        :param config: The settings, an instance of :attr:`configuration`; when ``None``,
            read from the environment if the handler has a :attr:`configuration`.
        :raises ConfigurationException: A setting in the environment is missing or
            invalid.
        """
        if config is None and self.configuration is not None:
            config = self.configuration.from_environment()
        self.config = config

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, object] | None = None, *, label: str | None = None
    ) -> Self:
        """Construct the handler from explicit settings, the environment filling the rest.

        :param settings: Settings that win over the handler's environment variables, by
            field name of :attr:`configuration`; none reads the environment only.
        :param label: How messages name a setting from ``settings`` (see
            :meth:`~grove.caches.configuration.HandlerConfiguration.from_settings`).
        :raises ConfigurationException: Settings were given to a handler without a
            :attr:`configuration`, a setting is unknown, or a value is missing or invalid.
        :return: The handler, not yet set up.
        """
        if not settings:
            return cls()
        if cls.configuration is None:
            raise ConfigurationException(
                f"{cls.__module__}.{cls.__qualname__} takes no settings "
                "(it declares no configuration)"
            )
        return cls(config=cls.configuration.from_settings(settings, label=label))

    def setup(self) -> None:  # noqa: B027 - deliberately a no-op hook, not abstract.
        """Prepare the handler once, after it was constructed.

        Grove calls this once before the first call. The default does nothing; a handler
        may open clients or check its storage here.

        :raises ConfigurationException: The handler's configuration cannot work.
        :raises AccessException: The storage could not be reached.
        """

    @abc.abstractmethod
    def get(self, pk: str, sk: str) -> str:
        """Gets the value for the given key from the cache.

        If the implementation does not differentiate partition and sort keys, these values
        should be combined in an appropriate way to form a cache key.

        :param pk: Partition key of the value to retrieve.
        :param sk: Sort key of the value to retrieve.
        :raises NotFoundException: No value was found.
        :return: The value from the cache.
        """

    @abc.abstractmethod
    def set(
        self,
        pk: str,
        sk: str,
        value: str,
        not_set: bool = False,
        constraint: str | None = None,
    ) -> None:
        """Stores the value for the given key in a cache.

        If the implementation does not differentiate partition and sort keys, these values
        should be combined in an appropriate way to form a cache key.

        :param pk: Partition key of the value to store.
        :param sk: Sort key of the value to store.
        :param value: Value to store.
        :param not_set: Specifies whether the value must not already be set in the cache
            for the set to be successful.
        :param constraint: An optional condition to use set operation. If provided, the
            currently cached value must match for the set to be successful.
        :raises ValueError: An incompatible set of parameters were provided.
        :raises DataFormatException: The provided constraint was not satisfied.
        """

    @abc.abstractmethod
    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        """Deletes an entry with the given key from the cache.

        If the implementation does not differentiate partition and sort keys, these values
        should be combined in an appropriate way to form a cache key.

        :param pk: Partition key of the value to delete.
        :param sk: Sort key of the value to delete.
        :param constraint: An optional condition to use during the delete. The value
            provided as the condition must match for the delete to be successful.
        :raises DataFormatException: The provided constraint was not satisfied.
        """

    def entries(self, pk: str | None = None, *, prefix: str | None = None) -> Iterator[CacheEntry]:
        """List stored entries lazily.

        All of them, those of one partition key, or those whose partition key starts
        with a prefix. Listing is an optional ability, :class:`Listing`: this default
        raises ``NotImplementedError``. The order is unspecified.
        An entry left unchanged while the listing runs is yielded exactly once; one changed
        meanwhile may appear with either value, or not at all if it was deleted.

        :param pk: List only the entries with this partition key.
        :param prefix: List only the entries whose partition key starts with this.
        :raises NotImplementedError: The handler cannot list entries.
        :raises ValueError: Both ``pk`` and ``prefix`` were given, or ``pk`` breaks the
            key rules.
        :raises AccessException: The storage failed.
        :return: An iterator of ``(pk, sk, value)`` entries.
        """
        raise NotImplementedError(
            f"{type(self).__module__}.{type(self).__qualname__} cannot list entries"
        )

    def create_storage(self) -> str:
        """Create what the handler needs to store entries, if it is missing.

        A table, a database file, a directory: whatever the backend needs before its
        first call. Safe to call again when everything exists. This is an optional
        ability, :class:`CreatingStorage`: the default raises ``NotImplementedError``.

        :raises NotImplementedError: The handler has nothing it can create.
        :raises AccessException: The storage could not be created.
        :return: What was created or found, in one line.
        """
        raise NotImplementedError(
            f"{type(self).__module__}.{type(self).__qualname__} cannot create its storage"
        )

    @classmethod
    def supports_expiry(cls) -> bool:
        """Tell whether the handler's ``set`` takes ``ttl``, so that entries expire.

        That is, whether it is an :class:`Expiring` (built-in handlers are through
        :class:`grove.caches.atomic.ExpiringCache`); a handler without it raises
        ``NotImplementedError`` when given ``ttl``.

        :return: ``True`` when the handler can expire entries.
        """
        return issubclass(cls, Expiring)

    @classmethod
    def supports_listing(cls) -> bool:
        """Tell whether :meth:`entries` is implemented: whether it is a :class:`Listing`.

        :return: ``True`` when the handler can list its entries.
        """
        return issubclass(cls, Listing)


class Listing(BaseCache):
    """The listing ability: :meth:`entries` yields the stored entries."""

    @override
    @abc.abstractmethod
    def entries(self, pk: str | None = None, *, prefix: str | None = None) -> Iterator[CacheEntry]:
        """List stored entries lazily; see :meth:`BaseCache.entries`.

        :param pk: List only the entries with this partition key.
        :param prefix: List only the entries whose partition key starts with this.
        :raises ValueError: Both ``pk`` and ``prefix`` were given, or ``pk`` breaks the
            key rules.
        :raises AccessException: The storage failed.
        :return: An iterator of ``(pk, sk, value)`` entries.
        """


class CreatingStorage(BaseCache):
    """The ability to create the storage: a table, a database file, a directory."""

    @override
    @abc.abstractmethod
    def create_storage(self) -> str:
        """Create what the handler needs to store entries, if it is missing.

        :raises AccessException: The storage could not be created.
        :return: What was created or found, in one line.
        """


class Maintaining(BaseCache):
    """The maintenance ability: removing what interrupted writes left behind.

    Temporary files, chunks of large values that no entry names: leftovers that are
    never read, only take space. A collector never needs this; an operator runs it now
    and then (``grove-cache maintain``).
    """

    @abc.abstractmethod
    def maintain(self, *, older_than: float | None = None) -> int:
        """Remove leftovers of interrupted writes, leaving those of writes in flight.

        Safe to run beside handlers in use.

        :param older_than: Leave leftovers younger than this many seconds: they may
            belong to a write in flight. ``None`` takes the handler's default.
        :raises AccessException: The storage failed; what was removed stays removed.
        :return: How many leftovers were removed.
        """


class Closing(BaseCache):
    """The ability to release connections or files before the handler is dropped."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the handler holds open; a later call opens it again."""


class Expiring(BaseCache):
    """The expiry ability: ``set(..., ttl=...)`` writes entries that expire.

    An expired entry is absent for every call. Built-in handlers get the rules from
    :class:`grove.caches.atomic.ExpiringCache`.
    """

    @override
    @abc.abstractmethod
    def set(
        self,
        pk: str,
        sk: str,
        value: str,
        not_set: bool = False,
        constraint: str | None = None,
        *,
        ttl: float | timedelta | None = None,
    ) -> None:
        """Store a value, one that expires when ``ttl`` is given; see :meth:`BaseCache.set`.

        :param pk: Partition key of the value to store.
        :param sk: Sort key of the value to store.
        :param value: Value to store.
        :param not_set: Store only if no unexpired value is stored yet.
        :param constraint: Store only if the stored, unexpired value equals this one.
        :param ttl: Seconds (or a timedelta) until the entry expires; ``None`` for never.
        :raises ValueError: An incompatible set of parameters were provided.
        :raises DataFormatException: The provided constraint was not satisfied.
        """

    @abc.abstractmethod
    def expires_at(self, pk: str, sk: str) -> datetime | None:
        """Tell when the entry under a key expires.

        :param pk: Partition key of the entry.
        :param sk: Sort key of the entry.
        :raises NotFoundException: No unexpired entry is stored.
        :return: The moment it expires (UTC), or ``None`` when it never does.
        """

    @abc.abstractmethod
    def sweep_expired(
        self, batch_size: int = 1000, progress: Callable[[int], None] | None = None
    ) -> int:
        """Remove expired entries from the storage, in batches of bounded size.

        :param batch_size: The most entries removed in one step.
        :param progress: Called with the number removed after each batch.
        :raises AccessException: The storage failed; batches already done stay done.
        :return: How many entries were removed.
        """


def _entry_points() -> dict[str, EntryPoint]:
    return {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """List the names of the installed handlers, sorted.

    :return: Every name registered in the ``grove.caches`` entry-point group.
    """
    return sorted(_entry_points())


def create(
    name: str | None = None,
    *,
    settings: Mapping[str, object] | None = None,
    settings_label: str | None = None,
) -> BaseCache:
    """Construct the named handler without calling its :meth:`~BaseCache.setup`.

    :param name: The handler's entry-point name, such as ``local_file``. When ``None``,
        the environment variable ``GROVE_CACHE_HANDLER`` (its name in any case) names it,
        else ``local_memory``.
    :param settings: Settings that win over the handler's environment variables, by
        field name (``{"path": "/var/lib/grove"}``); a name that is not a field is an
        error. They need a handler with a :attr:`~BaseCache.configuration`, as every
        built-in handler has; see :meth:`BaseCache.from_settings`.
    :param settings_label: How messages name a setting from ``settings``, such as
        ``--config`` (``--config path: ...``); by default ``setting 'path'``.
    :raises ConfigurationException: No handler has that name, its module cannot be
        imported (a missing extra), a setting is unknown, or its configuration is missing
        or invalid.
    :return: The handler, not yet set up.
    """
    if name is None:
        name = handler_from_environment() or DEFAULT_HANDLER
    installed = _entry_points()
    entry = installed.get(name)
    if entry is None:
        raise ConfigurationException(
            f"{HANDLER_ENV}: no cache handler named {name!r}; installed: "
            + ", ".join(sorted(installed))
        )
    try:
        handler_class = entry.load()
    except ImportError as exc:
        raise ConfigurationException(f"cache handler {name!r} cannot be imported: {exc}") from exc
    if not (isinstance(handler_class, type) and issubclass(handler_class, BaseCache)):
        raise ConfigurationException(
            f"entry point {name!r} ({entry.value}) is not a grove.caches.BaseCache subclass"
        )
    try:
        return handler_class.from_settings(settings, label=settings_label)
    except pydantic.ValidationError as exc:
        raise ConfigurationException(f"cache handler {name!r} is misconfigured: {exc}") from exc


def load(
    name: str | None = None,
    *,
    settings: Mapping[str, object] | None = None,
    settings_label: str | None = None,
) -> BaseCache:
    """Construct the named handler, call its :meth:`~BaseCache.setup`, and return it.

    :param name: The handler's entry-point name, such as ``local_file``. When ``None``,
        the environment variable ``GROVE_CACHE_HANDLER`` names it, else ``local_memory``.
    :param settings: Settings that win over the handler's environment variables; see
        :func:`create`.
    :param settings_label: How messages name a setting from ``settings``; see
        :func:`create`.
    :raises ConfigurationException: No handler has that name, its module cannot be
        imported (a missing extra), or its configuration is missing or invalid.
    :raises AccessException: The handler's storage could not be reached during setup.
    :return: The ready handler.
    """
    handler = create(name, settings=settings, settings_label=settings_label)
    handler.setup()
    return handler
