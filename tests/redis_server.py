"""Redis servers for the tests: the machine's shared one, and private ones to break.

The shared server's URL comes from ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
Tests on it work under a key prefix of their own and remove only their own keys. Tests
that stop, restart or break a server start a :class:`RedisServer` of their own on a free
loopback port, and stop it by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from grove.caches.redis import mask_url

DEFAULT_URL = "redis://127.0.0.1:6379/0"

START_HINT = (
    'start one with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" '
    "--appendonly no (or point REDIS_URL at one)"
)


def shared_url() -> str:
    """The shared server's URL: ``REDIS_URL``, else the machine's default."""
    return os.environ.get("REDIS_URL") or DEFAULT_URL


def absent(reason: str) -> None:
    """Skip the test, or fail it under ``CI=true``, where a server must be there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the server must be there)")
    pytest.skip(reason)


def require_shared_server() -> str:
    """Return the shared server's URL, skipping (failing under CI) when nothing answers."""
    url = shared_url()
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        absent(f"no Redis server answers at {mask_url(url)} ({exc}); {START_HINT}")
    finally:
        client.close()
    return url


def fresh_prefix() -> str:
    """A key prefix that no other test run uses."""
    return f"grove-test-{uuid.uuid4().hex}"


def remove_prefix(url: str, prefix: str) -> int:
    """Remove every key under ``prefix:`` on the server, and nothing else.

    :return: How many keys were removed.
    """
    client = redis.Redis.from_url(url)
    pattern = prefix.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
    pattern = pattern.replace("[", "\\[").replace("]", "\\]") + ":*"
    removed = 0
    try:
        batch: list[bytes] = []
        for name in client.scan_iter(match=pattern, count=1000):
            batch.append(name)
            if len(batch) >= 500:
                removed += int(client.unlink(*batch))
                batch = []
        if batch:
            removed += int(client.unlink(*batch))
    finally:
        client.close()
    return removed


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of the test's own, on a free loopback port.

    :param directory: Its working directory (AOF, RDB, log, unix socket).
    :param arguments: More ``redis-server`` options, e.g. ``["--appendonly", "yes"]``.
    """

    def __init__(self, directory: Path, arguments: list[str] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            absent("redis-server is not installed; install it (apt-get install redis-server)")
        self.binary = str(binary)
        self.directory = directory
        self.arguments = list(arguments or [])
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.unix_socket = directory / "redis.sock"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, wait: bool = True) -> None:
        """Start the server (again, on the same port and directory).

        :param wait: Wait until it answers ``PING`` with ``PONG``; otherwise only until it
            accepts connections (it may still be loading its data).
        """
        command = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--unixsocket",
            str(self.unix_socket),
            "--unixsocketperm",
            "700",
            "--logfile",
            str(self.directory / "redis.log"),
            "--daemonize",
            "no",
            *self.arguments,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    if not wait:
                        return
                    probe.sendall(b"PING\r\n")
                    if probe.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server by its PID: SIGTERM (it shuts down cleanly) or SIGKILL."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None

    def pause(self) -> None:
        """Stop the server's process without ending it (SIGSTOP): it answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def admin(self, **options: Any) -> redis.Redis:
        """A plain redis-py client for setting up and inspecting the server."""
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def log_every_command(self) -> None:
        """Make the slow log record every command, for :meth:`grove_commands`."""
        with self.admin() as client:
            client.config_set("slowlog-log-slower-than", 0)
            client.config_set("slowlog-max-len", 100_000)
            client.slowlog_reset()

    def grove_commands(self) -> list[str]:
        """The commands that clients named ``grove-caches`` sent, oldest first.

        Read from the slow log once :meth:`log_every_command` made it record every
        command. A command run inside a script is logged without a client name, so each
        name here is one round trip.
        """
        with self.admin() as client:
            entries = client.slowlog_get(100_000)
        return [
            entry["command"].split(b" ")[0].decode().upper()
            for entry in reversed(entries)
            if entry.get("client_name") == b"grove-caches"
        ]
