"""Checkpoint folders that appear whole or not at all.

A checkpoint is written into a hidden temporary folder next to where it belongs (``.NAME.tmp-`` and a random suffix) and
renamed into place once every file is written, so a process killed mid-write leaves that clearly named
temporary folder, never a destination that looks like a complete checkpoint. An error inside vlaser removes
the temporary folder; a kill cannot, and the folder is safe to delete.

Two shapes: ``atomic_directory`` owns the whole destination (``vlaser convert``); ``staged_checkpoint`` puts a
checkpoint's files into a folder that holds other things too (``vlaser train``'s output folder, with the
Trainer's ``checkpoint-N`` folders and logs), with ``config.json`` (what makes a folder a checkpoint for vlaser
and transformers) removed first and moved in last.

Both give what they publish the permissions the user's umask gives any new file or folder (``mkdtemp`` makes
0700 folders and the safetensors writer 0600 files, which other users of a shared cluster, or a serving
container, could not read).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vlaser.errors import UserInputError

#: The file whose presence makes a folder a checkpoint: removed first and published last.
MARKER = "config.json"
#: Weight files of an older checkpoint that the new one might not overwrite (another shard count or format).
_WEIGHT_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                    "pytorch_model.bin.index.json")


def check_destination(dst: Path, overwrite: bool) -> None:
    """Refuse a destination that is a file, or a non-empty folder unless ``overwrite``."""
    if dst.exists() and not dst.is_dir():
        raise UserInputError(f"{dst} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise UserInputError(f"{dst} is not empty; pass --overwrite to replace it, or choose a new folder")


def current_umask() -> int:
    """The process's umask (read from ``/proc`` where it can be; else set and put back at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(root: Path) -> None:
    """Give ``root`` and everything under it the mode a new folder (0777) or file (0666, or 0777 where
    executable) gets under the umask."""
    umask = current_umask()
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for path in paths:
        if path.is_symlink():
            continue
        executable = path.is_dir() or os.stat(path).st_mode & 0o111
        os.chmod(path, (0o777 if executable else 0o666) & ~umask)


def _temporary_sibling(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{secrets.token_hex(4)}"


@contextmanager
def atomic_directory(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``dst`` to write into; when the block completes it becomes ``dst``.

    With ``overwrite`` an existing ``dst`` is replaced only after the new folder is complete: it is renamed
    aside, the new one renamed in, then the old one deleted (a kill between the two renames leaves both
    complete folders under their temporary names, and no ``dst``).
    """
    dst = Path(dst)
    check_destination(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        follow_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not dst.exists():
        os.rename(tmp, dst)
        return
    old = _temporary_sibling(dst, "old")
    os.rename(dst, old)
    try:
        os.rename(tmp, dst)
    except BaseException:
        os.rename(old, dst)  # put the old folder back; the new one stays under its temporary name
        raise
    shutil.rmtree(old)


@contextmanager
def staged_checkpoint(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder inside ``out`` for a checkpoint's files; when the block completes they are
    moved into ``out``, ``config.json`` last.

    An older checkpoint's ``config.json`` and weight files in ``out`` are removed before anything moves, so
    at every moment ``out`` either lacks ``config.json`` or holds the complete new checkpoint.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.tmp-", dir=out))
    try:
        yield tmp
        if not (tmp / MARKER).is_file():
            raise RuntimeError(f"the staged checkpoint in {tmp} has no {MARKER}")
        follow_umask(tmp)
        (out / MARKER).unlink(missing_ok=True)
        for pattern in _WEIGHT_PATTERNS:
            for stale in out.glob(pattern):
                stale.unlink()
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == MARKER):
            target = out / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
        tmp.rmdir()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
