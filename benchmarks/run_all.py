"""Run every ``benchmarks/bench_*.py`` script in turn, each in its own process with the venv's python.

    python benchmarks/run_all.py [--quick] [-k SUBSTRING]

``--quick`` is passed on to every script. Each script's output streams through as it runs; a summary of exit
statuses and durations follows. Exits non-zero if any script failed (benchmarks never fail on timings, so a
non-zero exit means a crash).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def venv_python() -> str:
    """The repository's .venv interpreter when there is one, else the interpreter running this script."""
    for candidate in (REPO / ".venv" / "bin" / "python", REPO / ".venv" / "Scripts" / "python.exe"):
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run every benchmarks/bench_*.py script in turn.")
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("-k", dest="pattern", default=None, help="only scripts whose file name contains this")
    args = parser.parse_args(argv)

    scripts = sorted(HERE.glob("bench_*.py"))
    if args.pattern:
        scripts = [script for script in scripts if args.pattern in script.name]
    if not scripts:
        print("run_all: no benchmarks/bench_*.py scripts to run", file=sys.stderr)
        return 1
    python = venv_python()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    summary = []
    for script in scripts:
        command = [python, str(script)] + (["--quick"] if args.quick else [])
        print(f"=== {script.name} ({' '.join(command[1:])})", flush=True)
        started = time.perf_counter()
        status = subprocess.run(command, cwd=REPO, env=env).returncode
        summary.append((script.name, status, time.perf_counter() - started))
        print(flush=True)
    print("=== summary")
    for name, status, seconds in summary:
        print(f"{'ok  ' if status == 0 else 'FAIL'} {name:40s} exit {status:3d} {seconds:7.1f} s")
    return 0 if all(status == 0 for _, status, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
