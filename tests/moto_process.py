"""A local DynamoDB-compatible server: moto's WSGI app, served single-threaded.

Used by the tests (through :mod:`tests.moto_server`) and by the benchmarks. The server
runs in a child process on a free loopback port and serves one request at a time:
moto's threaded server does not serialise the check and the write of a conditional
update, so two racing ``not_set`` writers could both win inside the emulator. Served
one request at a time, every request is atomic, as on DynamoDB.

Run as a script, this file is the child: it binds ``127.0.0.1`` on a port the kernel
picks, prints ``port N`` on its standard output and serves until terminated.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from typing import IO

__all__ = ["MotoServer", "fake_credentials"]

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # No shared config or credentials file, no profile: nothing real is ever picked up.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""Environment variables that make boto3 use fake credentials and no local AWS files."""

UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
"""Environment variables that could point boto3 at real credentials."""


def fake_credentials() -> dict[str, str]:
    """Return the fake AWS environment, for a benchmark or a test to apply.

    :return: Variable names and values.
    """
    return dict(FAKE_CREDENTIALS)


class MotoServer:
    """A moto server in a child process, stopped by its PID.

    Use it as a context manager; :attr:`url` is its endpoint once started.

    :param threaded: Serve requests on threads, with keep-alive connections, as moto's
        own server does. Faster for benchmarks, but conditional writes may race inside
        moto: never for tests that count winners.
    """

    def __init__(self, *, threaded: bool = False) -> None:
        self.url = ""
        self.threaded = threaded
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None

    def start(self) -> str:
        """Start the child and wait until it listens.

        :raises RuntimeError: The child exited before it listened.
        :return: The endpoint, such as ``http://127.0.0.1:40123``.
        """
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by stop()
        self._process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *(["--threaded"] if self.threaded else [])],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"moto server did not start: {line!r} {self._read_log()}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self.url

    def _read_log(self) -> str:
        if self._log is None or self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read()[-2000:]

    def stop(self) -> None:
        """Terminate the child (by its PID) and wait for it."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _serve(threaded: bool) -> None:
    """Serve moto on a free loopback port until terminated.

    :param threaded: Serve on threads, else one request at a time.
    """
    # Imported here, in the child only: the parent needs neither moto nor werkzeug.
    import signal  # noqa: PLC0415

    from moto.moto_server.werkzeug_app import (  # noqa: PLC0415
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server  # noqa: PLC0415

    class QuietHandler(MotoRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            """Do not log every request."""

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    application = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        "127.0.0.1", 0, application, threaded=threaded, request_handler=QuietHandler
    )
    print(f"port {server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    _serve(threaded="--threaded" in sys.argv[1:])
