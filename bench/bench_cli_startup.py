"""How long the ``vlaser`` command takes to answer without doing any work: ``--help``, ``eval run --help``,
``--version`` and a usage error, each run a few times in a fresh process (the console script, as a user runs it).

The issue's bar is 1.5 s each on the 2-core development machine; before the imports were made lazy, ``--help``
took about 12 s (torch and transformers were imported for it).
Usage: python bench/bench_cli_startup.py [--repeats 5]
"""

import argparse
import os
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
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([*command, *argv], capture_output=True, check=False)
            times.append(time.perf_counter() - start)
        print(f"{label:45s} median {statistics.median(times):.2f} s  min {min(times):.2f} s  max {max(times):.2f} s")


if __name__ == "__main__":
    main()
