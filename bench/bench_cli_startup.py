"""How long the ``vlaser`` command takes to answer without doing any work: ``--help``, ``eval run --help``,
``--version`` and a usage error, each run a few times in a fresh process (the console script, as a user runs
it): wall and CPU time.

The issue's bar is 1.5 s each on the 2-core development machine. Before the imports were made lazy, each took
8-10 s of CPU (torch and transformers were imported for it); after, 0.15-0.2 s.
Usage: python bench/bench_cli_startup.py [--repeats 5]
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {"vlaser --help": ["--help"], "vlaser eval run --help": ["eval", "run", "--help"],
            "vlaser --version": ["--version"],
            "vlaser eval run --limit 0 (usage error)": ["eval", "run", "--limit", "0"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    script = shutil.which("vlaser")
    command = [script] if script else [sys.executable, "-m", "vlaser"]
    print(f"command: {' '.join(command)}; {args.repeats} runs each; {os.cpu_count()} CPUs")
    for label, argv in COMMANDS.items():
        times, cpu = [], []
        for _ in range(args.repeats):
            before, start = _children_cpu(), time.perf_counter()
            subprocess.run([*command, *argv], capture_output=True, check=False)
            times.append(time.perf_counter() - start)
            cpu.append(_children_cpu() - before)
        print(f"{label:42s} wall median {statistics.median(times):.2f} s (min {min(times):.2f}, max "
              f"{max(times):.2f})  CPU median {statistics.median(cpu):.2f} s")


def _children_cpu() -> float:
    """User and system CPU seconds of the finished child processes so far (steady on a busy machine, where the
    wall time also counts the waits for a core)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
