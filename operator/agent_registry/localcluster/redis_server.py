"""Debian's redis-server on a loopback port, without persistence.

Redis is only a cache for the registry, so tests want it empty and disposable: nothing
is saved, and a restart (``stop()``/``kill()`` then ``start()``) comes back empty on the
same port, the way a crashed cache pod does.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType

from agent_registry.localcluster.process import LOOPBACK, ManagedProcess, ProcessExitedError, free_port, log

_PORT_ATTEMPTS = 3


class RedisNotInstalledError(RuntimeError):
    pass


def _redis_server_path() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RedisNotInstalledError(
            "redis-server is not on PATH; install Debian's redis-server package (apt-get install -y redis-server)"
        )
    return path


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class LocalRedis:
    """``with LocalRedis() as redis: use(redis.url)``"""

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self._workdir: Path | None = None
        self._process: ManagedProcess | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self._port}/0"

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process and self._process.running else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def start(self) -> LocalRedis:
        """Start Redis; after a stop() or kill(), start it again, empty, on the same port."""
        if self._process is not None:
            self._process.start()
            self._wait_ready(self._process)
            return self
        server = _redis_server_path()
        self._workdir = Path(tempfile.mkdtemp(prefix="agent-registry-redis-"))
        atexit.register(self.close)
        try:
            self._process = self._start_on_free_port(server, self._workdir)
        except BaseException:
            self.close()
            raise
        log(f"redis-server ready at {self.url}")
        return self

    def stop(self) -> None:
        """SIGTERM; the server can be started again with start()."""
        if self._process is not None:
            self._process.stop()

    def kill(self) -> None:
        """SIGKILL, like a crash; the server can be started again with start()."""
        if self._process is not None:
            self._process.kill()

    def close(self) -> None:
        """Stop for good and remove the work directory. Safe to call more than once."""
        atexit.unregister(self.close)
        self.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start_on_free_port(self, server: str, workdir: Path) -> ManagedProcess:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self._port = free_port()
            argv = [
                server,
                "--port", str(self._port),
                "--bind", LOOPBACK,
                # A cache: nothing is written to disk, so a restart always starts empty.
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--daemonize", "no",
                # Empty logfile means stdout, which ManagedProcess sends to the log file.
                "--logfile", "",
            ]  # fmt: skip
            process = ManagedProcess("redis-server", argv, workdir / "redis.log")
            process.start()
            try:
                self._wait_ready(process)
            except ProcessExitedError:
                process.stop()
                if attempt == _PORT_ATTEMPTS or not process.failed_to_bind():
                    raise
                continue
            except BaseException:
                process.stop()
                raise
            return process
        raise AssertionError("unreachable")

    def _wait_ready(self, process: ManagedProcess) -> None:
        process.wait_until(lambda: _answers_ping(self._port), self.startup_timeout, "PING answers PONG")
