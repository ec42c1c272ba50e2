"""Owner-only files and folders under the data dir: the job store (prompts, uploaded init images), images,
settings, caches and their lock files are readable by the server's user alone, whatever the umask.

Folders are created ``0700`` (an existing folder is narrowed to that), files ``0600``; SQLite gives its
``-wal`` and ``-shm`` files the mode of the database file, so pre-creating that one covers all three.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` and any missing parents created owner-only; ``path`` itself narrowed if it existed."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """``path`` created empty and owner-only if it does not exist (its folder too); an existing file is
    narrowed to owner-only. For files other programs create (SQLite) or open for appending (locks)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path
