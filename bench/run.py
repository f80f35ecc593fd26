"""Run the benchmark at each N and write ``bench/results/<date>.json`` and ``.md``.

    python -m bench                                  # N = 1000, 3000, 10000; about 13 minutes per N that fits
                                                     # the machine (10,000 does not fit on 2 cores: docs/performance.md)
    python -m bench --agents 1000 --heartbeat-seconds 60
    python bench/run.py --help

Every N gets a fresh control plane, Redis, operator and facade (see ``scenario.py`` for
the phases). Progress goes to stderr; the results are written after each N, so an
interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # ``python bench/run.py``: make the repository importable as it is for ``python -m bench``.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_registry.localcluster import build
from bench.report import heartbeat_costs, judge, markdown
from bench.scenario import Options, run_for
from bench.stack import progress

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Options()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", default="1000,3000,10000", help="comma-separated fleet sizes (default %(default)s)")
    parser.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=defaults.heartbeat_seconds,
        help="steady heartbeat phase length (default %(default)s)",
    )
    parser.add_argument(
        "--discovery-rate",
        type=float,
        default=defaults.discovery_rate,
        help="offered discovery requests per second (default %(default)s)",
    )
    parser.add_argument(
        "--discovery-seconds",
        type=float,
        default=defaults.discovery_seconds,
        help="length of each fixed-rate discovery series (default %(default)s)",
    )
    parser.add_argument(
        "--saturation-seconds",
        type=float,
        default=defaults.saturation_seconds,
        help="length of each closed-loop throughput series (default %(default)s)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=defaults.lease_seconds,
        help="length of the CR-status and Lease comparison phases (default %(default)s)",
    )
    parser.add_argument(
        "--interval",
        type=int,
        default=defaults.interval,
        help="heartbeat interval of every agent, s (default %(default)s)",
    )
    parser.add_argument(
        "--unreachable-after",
        type=int,
        default=defaults.unreachable_after,
        help="agents' unreachableAfterSeconds (default %(default)s)",
    )
    parser.add_argument(
        "--sweep-seconds",
        type=float,
        default=defaults.sweep_seconds,
        help="operator's sweep interval (default %(default)s, the production default)",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=defaults.sample,
        help="agents silenced to time Unreachable detection (default %(default)s)",
    )
    parser.add_argument(
        "--matches",
        type=int,
        default=defaults.matches,
        help="agents a selective discovery query matches (default %(default)s)",
    )
    parser.add_argument(
        "--facade-auth",
        choices=("on", "off"),
        default="on",
        help="facade authentication: TokenReview + SubjectAccessReview (default %(default)s)",
    )
    parser.add_argument(
        "--facade-setting",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an extra facade setting by field name, e.g. redis_max_connections=50 (for experiments)",
    )
    parser.add_argument(
        "--profile-seconds",
        type=float,
        default=0.0,
        help="py-spy the operator and facade for this long during the steady heartbeats",
    )
    parser.add_argument(
        "--status-refresh-seconds",
        type=float,
        default=defaults.status_refresh_seconds,
        help="a Lease heartbeat also patches the Agent's status this often, as the sidecar "
        "(AGENT_STATUS_REFRESH_SECONDS); 0: never (default %(default)s)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=defaults.idle_seconds,
        help="nothing written for this long before the floor's renewals, for the API server's "
        "fixed cost (default %(default)s)",
    )
    parser.add_argument(
        "--sidecar-seconds",
        type=float,
        default=defaults.sidecar_seconds,
        help="how long the sidecar runs before its RSS is read (default %(default)s)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where to write the results")
    parser.add_argument("--name", help="file name (without extension) of the results; default the date")
    parser.add_argument(
        "--wait-for-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each N, wait up to this long for other heavy work (load average, pytest) to end",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (path printed at the end)")
    return parser.parse_args(argv)


def other_work() -> list[str]:
    """Other heavy processes on the machine (tests, other benchmarks), by command line."""
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if any(word in cmdline for word in ("pytest", "operator_cold_start", "-m bench")) and "timeout " not in cmdline:
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def wait_for_idle(limit: float) -> None:
    if limit <= 0:
        return
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        load = os.getloadavg()[0]
        others = other_work()
        if load < 1.5 and not others:
            return
        progress(f"waiting for the machine to settle: load {load:.1f}, {len(others)} other heavy processes")
        time.sleep(30)
    progress("the machine stayed busy; running anyway (the load is recorded)")


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(memory, 1), "kernel": platform.release()}


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+changes" if uncommitted() else "")


def uncommitted() -> list[str]:
    """Files that differ from the commit (``git status --porcelain``): what ran was not only the commit."""
    try:
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=False)
    except OSError:
        return []
    return [line.strip() for line in dirty.stdout.splitlines() if line.strip()]


def experiment_meta(module: str, argv: list[str] | None, options: argparse.Namespace) -> dict[str, Any]:
    """The ``meta`` of an experiment's results (``bench.routing``, ``bench.watches``): when,
    the command as typed, its options, the machine, versions and the commit."""
    args = sys.argv[1:] if argv is None else argv
    return {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python -m {module} {' '.join(shlex.quote(a) for a in args)}".strip(),
        "options": {key: str(value) for key, value in vars(options).items()},
        "machine": machine(),
        "versions": {"kubernetes": build.KUBERNETES_VERSION, "python": platform.python_version()},
        "commit": commit(),
        "uncommitted": uncommitted(),
    }


def results_path(directory: Path, name: str | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if name:
        return directory / f"{name}.json"
    stem = datetime.now(UTC).strftime("%Y-%m-%d")
    path = directory / f"{stem}.json"
    serial = 2
    while path.exists():
        path = directory / f"{stem}-{serial}.json"
        serial += 1
    return path


def write(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    path.with_suffix(".md").write_text(markdown(results))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a CI job cancelled, `timeout`) unwinds like Ctrl-C, so every server is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    sizes = [int(part) for part in args.agents.split(",") if part.strip()]
    facade_settings = dict(item.split("=", 1) for item in args.facade_setting)
    path = results_path(args.results_dir, args.name)
    profile_dir = path.parent / f"{path.stem}-profiles"
    if args.profile_seconds > 0:
        profile_dir.mkdir(parents=True, exist_ok=True)
    options = Options(
        heartbeat_seconds=args.heartbeat_seconds,
        discovery_rate=args.discovery_rate,
        discovery_seconds=args.discovery_seconds,
        saturation_seconds=args.saturation_seconds,
        lease_seconds=args.lease_seconds,
        interval=args.interval,
        unreachable_after=args.unreachable_after,
        sweep_seconds=args.sweep_seconds,
        sample=args.sample,
        matches=args.matches,
        facade_auth=args.facade_auth == "on",
        keep_logs=args.keep_logs,
        facade_settings=facade_settings or None,
        profile_seconds=args.profile_seconds,
        profile_dir=str(profile_dir) if args.profile_seconds > 0 else None,
        sidecar_seconds=args.sidecar_seconds,
        status_refresh_seconds=args.status_refresh_seconds,
        idle_seconds=args.idle_seconds,
    )
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    results: dict[str, Any] = {
        "meta": {
            "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command.strip(),
            "options": asdict(options),
            "machine": machine(),
            "versions": {
                "kubernetes": build.KUBERNETES_VERSION,
                "etcd": build.ETCD_VERSION,
                "python": platform.python_version(),
            },
            "commit": commit(),
            "uncommitted": uncommitted(),
            "other_work": [],
        },
        "runs": [],
    }
    progress(f"results go to {path} (and {path.with_suffix('.md').name})")
    failed = False
    for n in sizes:
        wait_for_idle(args.wait_for_idle)
        busy = other_work()
        results["meta"]["other_work"] = sorted(set(results["meta"]["other_work"]) | set(busy))
        started = time.monotonic()
        try:
            run = asyncio.run(run_for(n, options))
        except KeyboardInterrupt:
            progress("interrupted")
            write(path, results)
            return 130
        except Exception as exc:
            run = {"agents": n, "error": f"{type(exc).__name__}: {exc}"}
        run["wall_seconds"] = round(time.monotonic() - started, 1)
        failed = failed or "error" in run
        run["heartbeat_cost"] = heartbeat_costs(run)
        run["verdict"] = judge(run)
        results["runs"].append(run)
        write(path, results)
        missed = [k for k, v in run["verdict"]["targets"].items() if not v["met"]]
        progress(f"N={n} done in {run['wall_seconds']:.0f}s; targets missed: {', '.join(missed) or 'none'}")
    progress(f"wrote {path} and {path.with_suffix('.md')}")
    print(path.with_suffix(".md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
