"""CPU and memory of the processes under test, read from /proc once a second.

Each process is sampled by pid: CPU as (utime + stime) / CLK_TCK, memory as VmRSS. The
whole machine's busy share comes from /proc/stat, so a figure can be read against how
saturated the two cores were at the time. Phases are windows over the same samples:
``mark(name)`` opens one, ``summary(name)`` turns it into averages and peaks.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float | None:
    """Resident set size in MB (VmRSS), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


@dataclass
class Sample:
    at: float
    cpu: dict[str, float]
    rss: dict[str, float]
    machine: tuple[float, float]


@dataclass
class Sampler:
    """A thread that samples every registered process once per ``period`` seconds."""

    period: float = 1.0
    pids: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    marks: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, name: str, pid: int | None) -> None:
        with self._lock:
            if pid:
                self.pids[name] = pid
            else:
                self.pids.pop(name, None)

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def take(self) -> Sample:
        with self._lock:
            pids = dict(self.pids)
        cpu: dict[str, float] = {}
        rss: dict[str, float] = {}
        for name, pid in pids.items():
            seconds, mb = cpu_seconds(pid), rss_mb(pid)
            if seconds is not None and mb is not None:
                cpu[name], rss[name] = seconds, mb
        sample = Sample(time.monotonic(), cpu, rss, machine_busy())
        with self._lock:
            self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.take()

    # --- phases -----------------------------------------------------------------------

    def mark(self, phase: str) -> None:
        """Open a phase now (a sample is taken so the window starts exactly here)."""
        self.take()
        self.marks[phase] = (time.monotonic(), None)

    def end(self, phase: str) -> None:
        self.take()
        started, _ = self.marks[phase]
        self.marks[phase] = (started, time.monotonic())

    def summary(self, phase: str) -> dict[str, Any]:
        """Per process: average CPU cores, the busiest 5-second window, peak and last RSS;
        and the machine's average busy share of all its cores."""
        started, ended = self.marks[phase]
        ended = ended if ended is not None else time.monotonic()
        with self._lock:
            window = [s for s in self.samples if started - 1e-6 <= s.at <= ended + 1e-6]
        result: dict[str, Any] = {"seconds": round(ended - started, 1), "processes": {}}
        if len(window) < 2:
            return result
        first, last = window[0], window[-1]
        for name in sorted(set(first.cpu) | set(last.cpu) | {n for s in window for n in s.rss}):
            present = [s for s in window if name in s.cpu]
            if not present:
                continue
            span = present[-1].at - present[0].at
            avg = (present[-1].cpu[name] - present[0].cpu[name]) / span if span > 0 else 0.0
            result["processes"][name] = {
                "cpu_cores_avg": round(avg, 3),
                "cpu_cores_max_5s": round(_max_window(present, name, 5.0), 3),
                "rss_mb_peak": round(max(s.rss[name] for s in present), 1),
                "rss_mb_last": round(present[-1].rss[name], 1),
            }
        busy = last.machine[0] - first.machine[0]
        total = last.machine[1] - first.machine[1]
        result["machine_busy_share"] = round(busy / total, 3) if total > 0 else None
        result["machine_busy_cores"] = round(busy / total * (os.cpu_count() or 1), 2) if total > 0 else None
        return result


def _max_window(samples: list[Sample], name: str, width: float) -> float:
    """The highest average CPU (cores) over any window of about ``width`` seconds."""
    best = 0.0
    j = 0
    for i in range(len(samples)):
        while j < len(samples) and samples[j].at - samples[i].at < width:
            j += 1
        if j >= len(samples):
            break
        span = samples[j].at - samples[i].at
        if span > 0:
            best = max(best, (samples[j].cpu[name] - samples[i].cpu[name]) / span)
    if best == 0.0 and len(samples) >= 2:
        span = samples[-1].at - samples[0].at
        best = (samples[-1].cpu[name] - samples[0].cpu[name]) / span if span > 0 else 0.0
    return best
