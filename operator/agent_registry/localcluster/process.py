"""Child processes that never outlive the Python process that started them.

Each server runs in its own session (so a Ctrl-C in the terminal reaches only the
Python process, which then shuts the children down in order) and is stopped by
signalling its whole process group. Three nets catch what a ``stop()`` call misses:

* fixtures and context managers stop their processes on failure and on Ctrl-C;
* an ``atexit`` hook kills whatever is still registered when the interpreter exits;
* when the start happens on the main thread, the child is started through util-linux's
  ``setpriv --pdeathsig KILL``, so the kernel kills it when its parent dies; that covers
  a SIGKILLed test runner. (``setpriv`` rather than a ``preexec_fn``, which is unsafe in
  a process with threads.) The kernel ties that signal to the *thread* that forked, so
  children started from worker threads, which may end at any time, go without it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self, TypeVar

# Loopback only: nothing started for tests is reachable from outside the machine.
LOOPBACK = "127.0.0.1"
_SETPRIV = shutil.which("setpriv")

_live: set[ManagedProcess] = set()
_live_lock = threading.Lock()
T = TypeVar("T")


def log(message: str) -> None:
    """Progress for slow steps, on stderr so it never mixes with printed results."""
    print(f"[localcluster] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now.

    Another process may take it before our server binds it; callers retry on
    "address already in use" (see :meth:`ManagedProcess.failed_to_bind`).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class WaitTimeoutError(TimeoutError):
    """Something waited for did not happen in time."""


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.2,
    check: Callable[[], None] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy, and return that.

    ``check`` runs before every probe and may raise to give up early (a server that
    died will never become ready). The probe runs at least once, and once more at the
    deadline, so a slow machine that oversleeps still gets its last look.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        if check is not None:
            check()
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise WaitTimeoutError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def _with_parent_death_signal(argv: list[str]) -> list[str]:
    if _SETPRIV is None or threading.current_thread() is not threading.main_thread():
        return argv
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]


class ManagedProcess:
    """One long-running server: start, stop, kill, restart with the same arguments."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        stop_grace_seconds: float = 5.0,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.stop_grace_seconds = stop_grace_seconds
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen else None

    def start(self) -> Self:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append, so the log of a restarted server still shows why it stopped last time.
        self._note(f"starting {self.name}: {' '.join(self.argv)}")
        with self.log_path.open("ab") as log_file:
            self._popen = subprocess.Popen(
                _with_parent_death_signal(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        with _live_lock:
            _live.add(self)
        return self

    def stop(self, grace_seconds: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL if the process is still there after the grace period; the exit status."""
        self._terminate(signal.SIGTERM, self.stop_grace_seconds if grace_seconds is None else grace_seconds)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL at once: a crash, as fault tests want it."""
        self._terminate(signal.SIGKILL, 0.0)

    def send_signal(self, sig: signal.Signals) -> None:
        """A signal to the whole process group, as the kubelet's stop or a terminal's Ctrl-C sends it."""
        if self.running and self._popen is not None:
            self._signal_group(self._popen.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit status, once the process has exited by itself (``subprocess.TimeoutExpired`` otherwise)."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.wait(timeout=timeout)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing, as a stalled server does."""
        if self.running and self._popen is not None:
            self._note("SIGSTOP (paused by a fault test)")
            self._signal_group(self._popen.pid, signal.SIGSTOP)
            self._wait_stopped(self._popen.pid)

    @staticmethod
    def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
        """Until every thread is stopped: a thread busy on another core finishes its current
        request first, and a test must not count that answer as one from a paused server."""
        deadline = time.monotonic() + timeout
        tasks = Path(f"/proc/{pid}/task")
        while time.monotonic() < deadline:
            try:
                states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                return
            if all(state in ("T", "t") for state in states):
                return
            time.sleep(0.01)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        if self.running and self._popen is not None:
            self._signal_group(self._popen.pid, signal.SIGCONT)
            self._note("SIGCONT (resumed)")

    def _terminate(self, sig: signal.Signals, grace_seconds: float) -> None:
        popen = self._popen
        if popen is None:
            return
        # A leader that exited on its own may have been reaped long ago and its pid reused:
        # only signal groups whose leader we have just seen alive.
        if popen.poll() is None:
            # A paused server would never act on SIGTERM.
            self._signal_group(popen.pid, signal.SIGCONT)
            self._signal_group(popen.pid, sig)
            try:
                popen.wait(timeout=grace_seconds if sig != signal.SIGKILL else 10.0)
            except subprocess.TimeoutExpired:
                self._note(f"still running {grace_seconds:g}s after {sig.name}; sending SIGKILL")
                self._signal_group(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10.0)
            # Anything the server forked shares its process group, which outlives its leader.
            self._signal_group(popen.pid, signal.SIGKILL)
        with _live_lock:
            _live.discard(self)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def _note(self, message: str) -> None:
        """A line in the process's own log, where anyone debugging it will look."""
        with self.log_path.open("a") as log_file:
            log_file.write(f"=== {message}\n")

    def logs(self) -> str:
        """The whole log, every start of the process included."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        text = self.logs()
        return "\n".join(text.splitlines()[-lines:]) if text else "(no log written)"

    def failed_to_bind(self) -> bool:
        """Whether the process exited because its port was taken in the meantime."""
        return self.returncode is not None and "address already in use" in self.log_tail(80).lower()

    def check_alive(self, before: str = "") -> None:
        """Raise :class:`ProcessExitedError`, with the log's end, when the process has exited."""
        if not self.running:
            when = f" before {before}" if before else ""
            raise ProcessExitedError(
                f"{self.name} exited with code {self.returncode}{when}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until it returns True; fail early if the process dies."""
        try:
            wait_for(what, ready, timeout, interval=0.1, check=lambda: self.check_alive(before=what))
        except WaitTimeoutError:
            raise WaitTimeoutError(
                f"{self.name} did not reach '{what}' within {timeout:.0f}s; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            ) from None


class ProcessExitedError(RuntimeError):
    """A server exited while we waited for it to become ready."""


def _kill_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
    for process in leftovers:
        process.kill()


atexit.register(_kill_leftovers)
