"""JSON and JSON Lines files, read one way everywhere: training meta files and annotations, benchmark annotations,
eval predictions, LeRobot metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vlaser.errors import UserInputError


class JSONLError(UserInputError):
    """A line of a JSONL file is not JSON; the message names the file and the line.

    ``last``: it is the file's last line, as a writer killed mid-line leaves it.
    """

    def __init__(self, path: str | os.PathLike, line: int, reason: str, last: bool):
        super().__init__(f"{path}:{line}: invalid JSON: {reason}")
        self.path, self.line, self.reason, self.last = path, line, reason, last


def read_jsonl(path: str | os.PathLike,
               on_error: Callable[[JSONLError], None] | None = None) -> Iterator[tuple[int, Any]]:
    """``(1-based line number, value)`` for every non-blank line of ``path``.

    A line that is not JSON raises a :class:`JSONLError`; with ``on_error`` it is handed to that instead (which
    may record it, or raise) and passed over.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            error = JSONLError(path, number, str(e), last=number == len(lines))
            if on_error is None:
                raise error from e
            on_error(error)
            continue
        yield number, value


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file, or a ``UserInputError`` naming the file (missing, unreadable, or the line and column at fault)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path}: not UTF-8 text ({e.reason})") from e
    except OSError as e:
        raise UserInputError(f"{path}: cannot read ({e})") from e
