"""``python -m forksafe doctor``: what this platform gives forksafe, and what that means."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence

import forksafe
from forksafe import _native

from .engine import FORK_PATHS, run_forks
from .probes import ProbeWork, warm_up

_MEANING = {
    "wipeonfork": "the guard is a plain memory read (about 1 ns) and sees every fork path, "
    "including PID reuse",
    "syscall": "the guard calls getpid() on every access (about 100 ns) and cannot tell a "
    "descendant from an exited ancestor with the same PID",
    "nofork": "this platform has no fork(): every access is the same process, with no page and "
    "no system call; the fork-recovery machinery never runs",
}


def _glibc() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or "unknown"
    except (ValueError, OSError):
        return "not glibc"


def diagnose() -> dict[str, object]:
    """Collects the report; forks one child per path to verify what it claims."""
    warm_up()
    info = forksafe.runtime_info()
    verdicts: dict[str, str] = {}
    if info["guard"] == "nofork":
        verdicts = dict.fromkeys(FORK_PATHS, "not applicable (no fork() on this platform)")
    else:
        for outcome in run_forks(ProbeWork(), FORK_PATHS, concurrency=1, depth=2, deadline=10.0):
            ok = outcome.status == "ok"
            verdicts[outcome.path] = "covered" if ok else f"{outcome.status}: {outcome.detail}"
    paths = {name: verdicts[name] for name in FORK_PATHS}
    # A child that rebuilt its runtime and saw its own PID on a worker detected the fork.
    verified_guard = any(verdict == "covered" for verdict in paths.values())
    build = _native.build_info()
    return {
        "forksafe": forksafe.__version__,
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "glibc": _glibc(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "gil_enabled": info["gil_enabled"],
        "guard": info["guard"],
        "guard_reason": info["guard_reason"],
        "guard_meaning": _MEANING.get(str(info["guard"]), ""),
        "guard_verified_by_fork": verified_guard,
        "tokio_features": build["tokio_features"],
        "tokio_signal_driver": "signal" in build["tokio_features"],
        "tokio_process_driver": "process" in build["tokio_features"],
        "tokio_parking_lot": "parking_lot" in build["tokio_features"],
        "control_probe": _native.CONTROL_PROBE,
        "fork_paths": paths,
    }


def _on_off(flag: object, danger: str) -> str:
    return f"ON ({danger})" if flag else "off"


def render(report: dict[str, object]) -> str:
    """The human-readable report."""
    yes_no = {True: "yes", False: "no"}
    lines = [
        f"forksafe {report['forksafe']}",
        f"  kernel   {report['kernel']}",
        f"  glibc    {report['glibc']}",
        f"  python   {report['python']}",
        f"  GIL      {'enabled' if report['gil_enabled'] else 'disabled (free-threaded)'}",
        "",
        f"guard: {report['guard']} ({report['guard_reason']})",
        f"  means: {report['guard_meaning']}",
        f"  verified by a real fork: {yes_no[bool(report['guard_verified_by_fork'])]}",
        "",
        f"tokio features compiled in: {', '.join(report['tokio_features'])}",  # type: ignore[arg-type]
        f"  signal driver: {_on_off(report['tokio_signal_driver'], 'unsafe after fork')}",
        f"  process driver: {_on_off(report['tokio_process_driver'], 'unsafe after fork')}",
        f"  parking_lot: {_on_off(report['tokio_parking_lot'], 'busy children crash')}",
        "",
        "fork paths (one real fork each):",
    ]
    for name, verdict in report["fork_paths"].items():  # type: ignore[attr-defined]
        lines.append(f"  {name:<12} {verdict}")
    lines += [
        "",
        "not covered: vfork children that do not exec (they share the parent's memory), and",
        "tokio::signal / tokio::process in children (process-global drivers, compiled out).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 1 if a fork path is not covered here."""
    parser = argparse.ArgumentParser(
        prog="python -m forksafe doctor",
        description="Report what this platform gives forksafe, verified by real forks.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--cargo",
        metavar="PATH/Cargo.toml",
        help="instead: name each crate of this extension's tree that turns on tokio's "
        "parking_lot, signal or process (exit 1 if one does, 2 if cargo cannot resolve it)",
    )
    args = parser.parse_args(argv)
    if args.cargo is not None:
        return _cargo(args.cargo, as_json=args.json)
    report = diagnose()
    print(json.dumps(report, indent=2) if args.json else render(report))
    if report["guard"] == "nofork":
        return 0  # nothing forks here, so nothing can be uncovered
    covered = all(v == "covered" for v in report["fork_paths"].values())  # type: ignore[attr-defined]
    return 0 if covered else 1


def _cargo(manifest: str, *, as_json: bool) -> int:
    from dataclasses import asdict

    from . import cargo_features

    try:
        reports = cargo_features.analyse(manifest)
    except cargo_features.CargoError as error:
        print(f"doctor --cargo: {error}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps([asdict(r) for r in reports], indent=2))
    else:
        print(cargo_features.render(manifest, reports))
    hazard = any(f in r.features for r in reports for f in cargo_features.HAZARDS)
    return 1 if hazard else 0


if __name__ == "__main__":
    sys.exit(main())
