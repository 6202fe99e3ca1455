"""What a run records about how it was made, and the check that a resumed run was made the same way.

``run.json`` holds the vlaser version and git commit, the benchmark's protocol (name, version, source), every
generation and media setting actually used, the benchmark options, the backend with its model and a hash of
the checkpoint's config, the data folder, and how much of the benchmark the run covers (``limit``: the first N
items only, ``n_available``: the items the data holds, ``shards``: processes the items were split over).
``metrics.json`` repeats it under ``run`` and says at its top level whether the score is ``partial``.
"""

from __future__ import annotations

import functools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from vlaser.errors import UserInputError

#: what a resumed run must share with the recorded one: anything else would mix answers made differently
SAME_FOR_RESUME = ("benchmark", "protocol", "protocol_version", "settings", "options", "backend.backend",
                   "backend.model", "backend.config_sha256", "backend.system_message", "backend.server")


def vlaser_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vlaser")
    except PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the vlaser checkout this code runs from (``+dirty`` with local changes); None outside one."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty else "")


def run_record(benchmark, settings: dict[str, Any], backend_info: dict[str, Any], data_dir: Path,
               limit: int | None = None, n_available: int | None = None, shards: int = 1) -> dict:
    """The ``run.json`` of a run of ``benchmark`` with these (effective) settings, over the first ``limit`` of
    its ``n_available`` items split over ``shards`` processes."""
    return {"benchmark": benchmark.name, "protocol": benchmark.protocol,
            "protocol_version": benchmark.settings.version, "protocol_source": benchmark.settings.source,
            "settings": settings, "options": benchmark.options, "backend": backend_info, "data": str(data_dir),
            "limit": limit, "n_available": n_available, "shards": shards,
            "vlaser_version": vlaser_version(), "git_commit": git_commit(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def coverage(record: dict | None, n_items: int) -> dict[str, Any]:
    """What ``metrics.json`` says about how much of the benchmark was scored: ``partial`` when ``--limit`` left
    items out (a score over part of a benchmark is not comparable with a full one)."""
    record = record or {}
    available = record.get("n_available")
    available = n_items if available is None else available
    return {"limit": record.get("limit"), "n_available": available, "shards": record.get("shards", 1),
            "partial": n_items < available}


def partial_note(metrics: dict) -> str | None:
    """``"(20 of 100 items)"`` for a partial score, else None; how every table marks one."""
    if not metrics.get("partial"):
        return None
    return f"({metrics.get('n_items')} of {metrics.get('n_available')} items)"


def _get(record: dict, dotted: str):
    for key in dotted.split("."):
        record = record.get(key) if isinstance(record, dict) else None
    return record


def differences(recorded: dict, now: dict) -> list[str]:
    """``"key: recorded -> now"`` for each resume-relevant setting that differs (settings key by key)."""
    out = []
    for key in SAME_FOR_RESUME:
        old, new = _get(recorded, key), _get(now, key)
        if isinstance(old, dict) and isinstance(new, dict) and key == "settings":
            out += [f"settings.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                    if old.get(k) != new.get(k)]
        elif old != new:
            out.append(f"{key}: {json.dumps(old)[:80]} -> {json.dumps(new)[:80]}")
    return out


#: setting names ``run.json`` once recorded, and their names now
RENAMED_SETTINGS = {"max_num": "max_tiles"}


def upgraded(record: dict) -> dict:
    """A ``run.json`` written by an earlier vlaser with today's setting names, so a run it recorded resumes."""
    settings = record.get("settings")
    if isinstance(settings, dict):
        record["settings"] = {RENAMED_SETTINGS.get(k, k): v for k, v in settings.items()}
    return record


def check_and_write(out: Path, record: dict) -> None:
    """Refuse to resume ``out`` when its recorded run was made differently (naming how); then record this run,
    keeping the first start time."""
    path = out / "run.json"
    if path.is_file():
        recorded = upgraded(json.loads(path.read_text()))
        changed = differences(recorded, record)
        if changed:
            raise UserInputError(f"{out} holds a run made with other settings ({'; '.join(changed)}); use a new --out, "
                                 "or the recorded settings, so answers made differently are not mixed")
        record = {**record, "started_at": recorded.get("started_at", record["started_at"]),
                  "resumed_at": record["started_at"]}
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
