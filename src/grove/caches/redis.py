"""Grove Redis cache handler: shared state for collectors on many hosts, without AWS.

Layout: one Redis string per entry, its value the entry's value as UTF-8 bytes, under the
key ``<prefix>:{<pk>}<sk>`` (``GROVE_CACHE_REDIS_PREFIX``, default ``grove``):

- ``<sk>`` is the sort key as UTF-8, unchanged: it runs to the end of the key.
- ``<pk>`` is the partition key as UTF-8 with two characters escaped: ``%`` as ``%25`` and
  ``}`` as ``%7D``, so the first ``}`` after ``{`` always ends the partition key. Every
  other character, NUL and ``{`` included, is kept as it is (Redis keys are binary safe),
  so Grove's keys read plainly: ``grove:{pointer.okta.1f2e}all``.
- The prefix may hold neither ``{`` nor ``}``, so ``{<pk>}`` is the key's *hash tag*:
  on Redis Cluster every entry of one partition key lives in one hash slot, and each
  call touches one key only.

A key therefore names exactly one ``(pk, sk)``, and no two entries share one. The
escaping is applied character by character and no escaped form is a prefix of another,
so the escaped form of ``p`` starts the escaped form of ``pk`` exactly when ``pk`` starts
with ``p``: ``<prefix>:{<escaped p>*`` matches the entries of partition keys starting
with ``p`` and nothing else, and ``<prefix>:{<escaped pk>}*`` those of one partition key
(neither the escaped text nor a prefix reaches past the ``}``). Another prefix, even one
that starts like this one (``grove`` and ``grove:x``), never matches: its keys do not
have ``{`` right after ``<prefix>:``. Keys under the prefix that this layout cannot have
produced are skipped by listings and never touched.

One string per entry, rather than one hash per partition key, is what lets an entry
expire on its own: Redis before 7.4 expires whole keys, never hash fields.

Atomicity: every call is one command, which Redis runs alone, so the check and the write
of a conditional call are one step for every client of the server:

- ``get``: ``GET``.
- ``set``: ``SET`` (which also clears an expiry), ``not_set``: ``SET NX``, both with
  ``PX <ms>`` when a ``ttl`` is given.
- ``set`` with ``constraint`` and ``delete`` with ``constraint``: a Lua script that
  compares the stored value with the constraint and writes (``SET``, with ``PX`` for a
  ``ttl``) or deletes only when they are equal. Scripts are sent by SHA1 (``EVALSHA``);
  on ``NOSCRIPT`` (a restarted or flushed server) the script is sent whole with ``EVAL``
  once, which also loads it again.
- ``delete``: ``DEL``.

Nothing is read before it is written on the client. Expiry uses the server's clock:
``PX`` is relative to the server's time, and Redis treats an expired key as absent for
every command (inside a script as well), so callers on hosts whose clocks disagree see
the same expiry. Expired keys are removed by Redis itself (on access, and by its active
expiry cycle), so :meth:`Handler.sweep_expired` has nothing to remove.

Listing: ``SCAN`` with ``MATCH`` (never ``KEYS``), then ``MGET`` of the names found, a
few at a time. ``SCAN`` returns every key that exists for the whole scan at least once,
and may return one twice; the names already yielded are remembered so that each entry
is yielded once. A key removed or expired between ``SCAN`` and ``MGET`` is skipped.
Listing one partition key scans the whole keyspace (of the database), as Redis has no
ordered index; it is an operator's tool, not a hot path.

Round trips: one per ``get``, ``set`` and ``delete`` (two, once, after a server lost its
script cache); listing costs one ``SCAN`` per page and one ``MGET`` per
:data:`LIST_BATCH` entries found.

Connections: one blocking pool per handler (``GROVE_CACHE_REDIS_POOL_SIZE``, default 50,
Grove's worker count), shared by its threads; a thread waits for a free connection up to
the socket timeout instead of failing. A connection is checked when it is taken from the
pool (a socket the server closed, after a restart or a ``CLIENT KILL``, is replaced), and
connect and socket timeouts are explicit, so a server that is down or stuck fails a call
with :class:`~grove.exceptions.AccessException` instead of hanging it. A forked child opens
its own connections.

Retries (``GROVE_CACHE_REDIS_RETRIES``, with backoff from :data:`RETRY_BACKOFF`
seconds): a call is retried when the connection failed before the command was sent
whole, or the server answered ``LOADING`` (restarting), as then nothing ran. A read
(``GET``, ``SCAN``) and an unconditional ``SET`` or ``DEL`` are also retried when the
connection failed while waiting for the answer: running them twice ends in the same
state. A conditional write whose answer is lost is not sent again, since a second run
would refuse what the first one did; it raises ``AccessException`` saying that its outcome
is unknown.

Failures: a server that is down, restarting, read-only (a replica), out of memory, or
demanding ``AUTH`` raises :class:`~grove.exceptions.AccessException`; a wrong password or
user and a database number the server does not have raise
:class:`~grove.exceptions.ConfigurationException` naming ``GROVE_CACHE_REDIS_URL``. The
password is masked (``****``) in every message and in the configuration's ``repr``.

Durability is the server's: Redis acknowledges a write once it is in memory. With AOF
and ``appendfsync always`` an acknowledged write survives a crash and a power loss; with
``appendfsync everysec`` (Redis's recommended setting) it survives a crash of the
server process, but a power loss may lose up to about a second of acknowledged writes;
with no persistence a restart loses everything. An evicting ``maxmemory-policy`` may
remove entries (an evicted lock is a lost lock): :meth:`Handler.create_storage` warns
unless it is ``noeviction``.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import urllib.parse
import warnings
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar, Final, Literal

import pydantic
from pydantic_settings import SettingsConfigDict
from typing_extensions import override

try:
    from redis import BlockingConnectionPool
    from redis.backoff import NoBackoff
    from redis.exceptions import (
        AuthenticationError,
        AuthorizationError,
        BusyLoadingError,
        NoScriptError,
        RedisError,
        ResponseError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry
except ImportError as exc:  # without the redis extra (a test hides it)
    raise ImportError(
        f"grove.caches.redis needs redis-py ({exc}): pip install 'grove-caches[redis]'"
    ) from exc

from grove.caches import CacheEntry, Closing, CreatingStorage, Listing
from grove.caches.atomic import (
    ABSENT,
    ANY,
    Expected,
    ExpectedToRemove,
    ExpiringCache,
    Sentinel,
    Stored,
)
from grove.caches.configuration import HandlerConfiguration
from grove.exceptions import ConfigurationException

__all__ = [
    "LIST_BATCH",
    "MIN_SERVER_VERSION",
    "RETRY_BACKOFF",
    "Configuration",
    "EvictionWarning",
    "Handler",
    "OutcomeUnknownError",
    "entry_key",
    "mask_url",
    "parse_entry_key",
]

MIN_SERVER_VERSION: Final = (6, 0)
"""The oldest Redis server the handler works with (every command it sends exists there)."""

LIST_BATCH: Final = 64
"""Values fetched by one ``MGET`` while listing: at most 256 MiB of 4 MiB values."""

RETRY_BACKOFF: Final = 0.1
"""Seconds before the first retry; each later retry waits twice as long, at most 2 s."""

_SCAN_COUNT = 1000
_SCHEMES = ("redis", "rediss", "unix")
_MASK = "****"

# KEYS[1]: the entry; ARGV[1]: the expected value; ARGV[2]: the new value; ARGV[3], when
# given: its time to live in milliseconds. GET of an absent or expired key is false.
_SET_IF_EQUAL = b"""\
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""

# KEYS[1]: the entry; ARGV[1]: the expected value.
_DELETE_IF_EQUAL = b"""\
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# KEYS[1]: the entry. The remaining time to live and the server's clock, read together.
_EXPIRY = b"""\
local now = redis.call('TIME')
return {redis.call('PTTL', KEYS[1]), now[1], now[2]}
"""


class EvictionWarning(UserWarning):
    """The server may evict entries (its ``maxmemory-policy`` is not ``noeviction``)."""


class OutcomeUnknownError(RedisError):
    """A conditional write was sent, then its connection failed before the answer came.

    The server may or may not have run it; it was not sent again.
    """


class _Script:
    """A Lua script, sent by SHA1 and whole only when the server does not know it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: bytes) -> None:
        self.source = source
        self.sha = hashlib.sha1(source).hexdigest()


_SET_IF_EQUAL_SCRIPT = _Script(_SET_IF_EQUAL)
_DELETE_IF_EQUAL_SCRIPT = _Script(_DELETE_IF_EQUAL)
_EXPIRY_SCRIPT = _Script(_EXPIRY)


def _escape_pk(pk: str) -> str:
    if "%" in pk:
        pk = pk.replace("%", "%25")
    if "}" in pk:
        pk = pk.replace("}", "%7D")
    return pk


_ESCAPES = re.compile("%(25|7D)")


def _unescape_pk(text: str) -> str | None:
    pk = _ESCAPES.sub(lambda match: "%" if match[1] == "25" else "}", text)
    return pk if _escape_pk(pk) == text else None


def entry_key(prefix: str, pk: str, sk: str) -> str:
    """Return the Redis key of an entry; see the module's docstring.

    :param prefix: The key prefix (no ``{`` or ``}``).
    :param pk: The partition key.
    :param sk: The sort key.
    :return: ``<prefix>:{<escaped pk>}<sk>``.
    """
    return f"{prefix}:{{{_escape_pk(pk)}}}{sk}"


def parse_entry_key(prefix: str, key: bytes) -> tuple[str, str] | None:
    """Return the ``(pk, sk)`` that a Redis key stands for, if this layout made it.

    :param prefix: The key prefix.
    :param key: A key name as the server returned it.
    :return: The keys, or ``None`` for a key this layout cannot have produced.
    """
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    start = f"{prefix}:{{"
    end = text.find("}", len(start))
    if not text.startswith(start) or end < 0:
        return None
    pk = _unescape_pk(text[len(start) : end])
    sk = text[end + 1 :]
    if not pk or not sk:
        return None
    return pk, sk


def _glob_escape(text: str) -> bytes:
    """Escape the characters that ``SCAN MATCH`` patterns treat specially."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text).encode("utf-8")


def mask_url(url: str) -> str:
    """Return a Redis URL with its password (and ``password=`` query values) masked.

    :param url: A ``redis://``, ``rediss://`` or ``unix://`` URL.
    :return: The same URL with ``****`` in place of each password.
    """
    parts = urllib.parse.urlsplit(url)
    masked = url
    if parts.password is not None:
        credentials, _, host = parts.netloc.rpartition("@")
        user = credentials.partition(":")[0]
        masked = masked.replace(f"//{parts.netloc}", f"//{user}:{_MASK}@{host}", 1)
    if parts.query:
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        query = "&".join(
            f"{name}={_MASK if name.lower() == 'password' else value}" for name, value in pairs
        )
        masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked


class Configuration(HandlerConfiguration):
    """Settings of the Redis handler, from ``GROVE_CACHE_REDIS_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="GROVE_CACHE_REDIS_")

    url: pydantic.SecretStr = pydantic.SecretStr("redis://localhost:6379/0")
    """``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS, or
    ``unix:///path/to/socket?db=0``. Secret: it may hold a password."""

    prefix: str = pydantic.Field(default="grove", min_length=1)
    """The start of every key the handler writes, before ``:{``."""

    connect_timeout: float = pydantic.Field(default=5.0, gt=0)
    """Seconds to wait for a connection to the server, per attempt."""

    socket_timeout: float = pydantic.Field(default=10.0, gt=0)
    """Seconds to wait for an answer (and for a free connection of the pool)."""

    pool_size: int = pydantic.Field(default=50, ge=1)
    """Connections shared by the threads of one handler; at least the worker count."""

    retries: int = pydantic.Field(default=3, ge=0)
    """Retries of a call that failed without effect (or with a repeatable one)."""

    @pydantic.field_validator("url")
    @classmethod
    def _a_redis_url(cls, value: pydantic.SecretStr) -> pydantic.SecretStr:
        url = value.get_secret_value().strip()
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in _SCHEMES:
            raise ValueError(
                f"must start with redis://, rediss:// or unix://, not {scheme or 'nothing'}"
                f"{'://' if scheme else ''} ({mask_url(url)})"
            )
        return pydantic.SecretStr(url)

    @pydantic.field_validator("prefix")
    @classmethod
    def _no_braces(cls, value: str) -> str:
        if "{" in value or "}" in value:
            raise ValueError("must not contain { or } (they delimit the partition key)")
        return value

    @property
    def masked_url(self) -> str:
        """The URL with its password masked, for messages."""
        return mask_url(self.url.get_secret_value())


class Handler(ExpiringCache, Listing, CreatingStorage, Closing):
    """A cache handler that keeps Grove's pointers, locks and hashes in Redis."""

    configuration = Configuration
    config: Configuration

    driver_errors: ClassVar[tuple[type[Exception], ...]] = (RedisError, UnicodeDecodeError)
    clock_owner: ClassVar[Literal["caller", "server"]] = "server"

    def __init__(self, config: Configuration | None = None) -> None:
        """Prepare the handler; no connection is made until the first call or :meth:`setup`.

        :param config: The settings; read from the environment when ``None``.
        :raises ConfigurationException: A setting is missing or invalid, or the URL
            cannot be parsed.
        """
        self.config = config if config is not None else Configuration.from_environment()
        self.prefix = self.config.prefix
        self._location = f"redis cache {self.prefix!r} at {self.config.masked_url}"
        try:
            self.pool = BlockingConnectionPool.from_url(
                self.config.url.get_secret_value(),
                max_connections=self.config.pool_size,
                timeout=self.config.socket_timeout,
                socket_connect_timeout=self.config.connect_timeout,
                socket_timeout=self.config.socket_timeout,
                # The handler retries, knowing which commands are safe to send again.
                retry=Retry(NoBackoff(), 0),
                client_name="grove-caches",
            )
        except ValueError as exc:
            raise ConfigurationException(
                f"{Configuration.env_name('url')}: cannot use {self.config.masked_url}: "
                f"{_masked(str(exc), self.config)}"
            ) from exc
        # Close the sockets when the handler goes, not whenever the garbage collector
        # gets to each connection.
        weakref.finalize(self, self.pool.disconnect)

    @override
    def location(self) -> str:
        return self._location

    def close(self) -> None:
        """Close the pool's connections; a later call opens new ones."""
        self.pool.disconnect()

    # -- commands ----------------------------------------------------------------------

    def _execute(self, *command: Any, repeatable: bool = True) -> Any:
        """Send one command on a pooled connection and return the server's answer.

        :param command: The command and its arguments.
        :param repeatable: Whether running the command twice ends in the same state as
            running it once, so it may be sent again when its answer was lost.
        :raises ConfigurationException: The password or user is wrong, or the database
            does not exist.
        :raises RedisError: The server refused the command, or could not be reached
            after the retries.
        :return: The answer, as redis-py parses it (bytes for strings).
        """
        pool = self.pool
        attempt = 0
        while True:
            sent = False
            try:
                connection = pool.get_connection()  # type: ignore[no-untyped-call]
            except (AuthenticationError, AuthorizationError, ResponseError) as exc:
                # The handshake (AUTH, SELECT of the database) was refused.
                raise self._refusal(exc) from exc
            except (RedisConnectionError, RedisTimeoutError) as exc:
                failure: RedisError = exc
            else:
                try:
                    connection.send_command(*command, check_health=False)
                    sent = True
                    return connection.read_response()
                except (AuthenticationError, AuthorizationError) as exc:
                    raise self._refusal(exc) from exc
                except BusyLoadingError as exc:
                    failure = exc  # The server is loading its data: nothing ran.
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    if sent and not repeatable:
                        raise OutcomeUnknownError(
                            f"the connection failed after {command[0]!s} was sent, so it "
                            f"may or may not have been applied (not sent again): {exc}"
                        ) from exc
                    failure = exc
                finally:
                    pool.release(connection)  # type: ignore[no-untyped-call]
            if attempt >= self.config.retries:
                raise failure
            time.sleep(min(2.0, RETRY_BACKOFF * 2**attempt))
            attempt += 1

    def _run_script(
        self, script: _Script, key: str, *arguments: Any, repeatable: bool = False
    ) -> Any:
        """Run a Lua script on one key: by SHA1, and whole if the server lacks it."""
        try:
            return self._execute("EVALSHA", script.sha, 1, key, *arguments, repeatable=repeatable)
        except NoScriptError:
            # Nothing ran; EVAL runs the script and caches it for the next EVALSHA.
            return self._execute("EVAL", script.source, 1, key, *arguments, repeatable=repeatable)

    def _refusal(self, exc: RedisError) -> RedisError | ConfigurationException:
        """What to raise when the server refused the connection or its credentials.

        A server that wants a password it was not given is an access error (it may have
        been given one since the handler was configured); a wrong password or user, or a
        database the server does not have, is a configuration error.
        """
        message = str(exc)
        if getattr(exc, "status_code", None) == "NOAUTH" or (
            message.lower().startswith("authentication required")
            or "already authenticated" in message
        ):
            return AuthenticationError(f"the server requires a password (NOAUTH): {exc}")
        return ConfigurationException(
            f"{Configuration.env_name('url')}: {self.location()} refused the connection "
            f"(credentials, database or handshake): {type(exc).__name__}: "
            f"{_masked(str(exc), self.config)}"
        )

    def _key(self, pk: str, sk: str) -> str:
        return entry_key(self.prefix, pk, sk)

    # -- setup -------------------------------------------------------------------------

    @override
    def setup(self) -> None:
        """Check that the server answers, with one ``PING``.

        :raises ConfigurationException: The credentials or the database are wrong.
        :raises AccessException: The server cannot be reached or refused the command.
        """
        try:
            self._execute("PING")
        except RedisError as exc:
            raise self._failure("setup", exc) from exc

    def server_info(self) -> dict[str, str]:
        """Return the fields of the server's ``INFO`` (default sections).

        :raises ConfigurationException: The credentials or the database are wrong.
        :raises AccessException: The server cannot be reached or refused the command.
        :return: Field name to value, such as ``redis_version`` to ``7.0.15``.
        """
        try:
            answer = self._execute("INFO")
        except RedisError as exc:
            raise self._failure("INFO", exc) from exc
        text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)
        fields = {}
        for line in text.splitlines():
            name, separator, value = line.partition(":")
            if separator and not name.startswith("#"):
                fields[name.strip()] = value.strip()
        return fields

    @override
    def create_storage(self) -> str:
        """Check the server: nothing needs creating in Redis.

        It must be Redis (or Valkey) :data:`MIN_SERVER_VERSION` or newer, and should not
        evict keys: any ``maxmemory-policy`` other than ``noeviction`` may remove entries
        (locks and pointers) under memory pressure, so it gives an
        :class:`EvictionWarning`.

        :raises ConfigurationException: The server is too old, or the credentials or the
            database are wrong.
        :raises AccessException: The server cannot be reached.
        :return: What was found, in one line.
        """
        info = self.server_info()
        version_text = info.get("redis_version", "")
        version = tuple(int(part) for part in re.findall(r"\d+", version_text)[:2])
        if version < MIN_SERVER_VERSION:
            raise ConfigurationException(
                f"{Configuration.env_name('url')}: {self.location()} runs Redis "
                f"{version_text or 'of an unknown version'}; the handler needs "
                f"{'.'.join(map(str, MIN_SERVER_VERSION))} or newer"
            )
        policy = info.get("maxmemory_policy", "unknown")
        persistence = "AOF" if info.get("aof_enabled") == "1" else "no AOF"
        found = (
            f"found {self.location()}: Redis {version_text}, role {info.get('role', '?')}, "
            f"{persistence}, maxmemory-policy {policy}"
        )
        if policy != "noeviction":
            message = (
                f"{self.location()} has maxmemory-policy {policy}: under memory pressure "
                "the server may evict entries, and an evicted lock is a lost lock; set "
                "maxmemory-policy noeviction"
            )
            warnings.warn(message, EvictionWarning, stacklevel=2)
            found += " (evicts entries: set noeviction)"
        return found

    # -- primitives --------------------------------------------------------------------

    @override
    def _read(self, pk: str, sk: str) -> Stored:
        """Atomic: one ``GET``; an expired key is absent."""
        value = self._execute("GET", self._key(pk, sk))
        return ABSENT if value is None else value.decode("utf-8")

    @override
    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> bool:
        """Atomic: ``SET`` (clearing any expiry), ``SET NX``, or the compare-and-set script."""
        key = self._key(pk, sk)
        if expected is ANY:
            self._execute("SET", key, value)
            return True
        if expected is ABSENT:
            return self._execute("SET", key, value, "NX", repeatable=False) is not None
        return bool(self._run_script(_SET_IF_EQUAL_SCRIPT, key, expected, value))

    @override
    def _write_expiring(self, pk: str, sk: str, value: str, expected: Expected, ttl: float) -> bool:
        """Atomic: as :meth:`_write`, with ``PX`` in the same command or script."""
        key = self._key(pk, sk)
        milliseconds = max(1, math.ceil(ttl * 1000))
        if expected is ANY:
            self._execute("SET", key, value, "PX", milliseconds)
            return True
        if expected is ABSENT:
            answer = self._execute("SET", key, value, "NX", "PX", milliseconds, repeatable=False)
            return answer is not None
        return bool(self._run_script(_SET_IF_EQUAL_SCRIPT, key, expected, value, milliseconds))

    @override
    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> bool:
        """Atomic: ``DEL``, or the compare-and-delete script."""
        key = self._key(pk, sk)
        if expected is ANY:
            self._execute("DEL", key)
            return True
        return bool(self._run_script(_DELETE_IF_EQUAL_SCRIPT, key, expected))

    @override
    def _read_expiry(self, pk: str, sk: str) -> float | Literal[Sentinel.ABSENT] | None:
        """One script reads ``PTTL`` and the server's ``TIME``: the server's clock decides."""
        remaining, seconds, microseconds = self._run_script(
            _EXPIRY_SCRIPT, self._key(pk, sk), repeatable=True
        )
        if remaining == -2:
            return ABSENT
        if remaining == -1:
            return None
        return int(seconds) + int(microseconds) / 1e6 + int(remaining) / 1000

    @override
    def _sweep_expired(self, limit: int) -> int:
        """Nothing to do: Redis removes expired keys itself (see the module docstring)."""
        return 0

    @override
    def _scan(self, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
        """``SCAN MATCH`` pages, each entry's value read by ``MGET``; see the module."""
        if pk is not None:
            pattern = _glob_escape(f"{self.prefix}:{{{_escape_pk(pk)}}}") + b"*"
        else:
            pattern = _glob_escape(f"{self.prefix}:{{{_escape_pk(prefix or '')}") + b"*"
        seen: set[bytes] = set()
        cursor: bytes | int = 0
        while True:
            cursor, names = self._execute("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT)
            found = self._selected(names, seen, pk, prefix)
            for start in range(0, len(found), LIST_BATCH):
                batch = found[start : start + LIST_BATCH]
                values = self._execute("MGET", *(name for name, _, _ in batch))
                for (_, entry_pk, entry_sk), value in zip(batch, values, strict=True):
                    if value is not None:
                        yield CacheEntry(entry_pk, entry_sk, value.decode("utf-8"))
            if int(cursor) == 0:
                return

    def _selected(
        self, names: list[bytes], seen: set[bytes], pk: str | None, prefix: str | None
    ) -> list[tuple[bytes, str, str]]:
        """The entries of one ``SCAN`` page that the listing asked for, each once.

        ``SCAN`` may return a name again on a later page (``seen`` remembers them), and
        its glob pattern also matches names that are not entries or whose escaped
        partition key only starts like the one asked for.
        """
        found: list[tuple[bytes, str, str]] = []
        for name in names:
            if name in seen:
                continue
            keys = parse_entry_key(self.prefix, name)
            if keys is None:
                continue
            entry_pk, entry_sk = keys
            if (pk is not None and entry_pk != pk) or (prefix and not entry_pk.startswith(prefix)):
                continue
            seen.add(name)
            found.append((name, entry_pk, entry_sk))
        return found


def _masked(text: str, config: Configuration) -> str:
    """Remove the URL's password from a driver's message, should it appear there."""
    password = urllib.parse.urlsplit(config.url.get_secret_value()).password
    if password:
        text = text.replace(password, _MASK).replace(urllib.parse.unquote(password), _MASK)
    return text
