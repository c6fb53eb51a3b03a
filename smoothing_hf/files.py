"""Atomic file writes (DESIGN.md contract 5): write to a temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary name beside ``path`` with the same extension (writers that infer the format
    from it keep working); rename it to ``path`` when the block succeeds, remove it when it fails."""
    root, extension = os.path.splitext(os.fspath(path))
    temporary = f"{root}.tmp-{os.getpid()}{extension}"
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(value: object, path: str | os.PathLike) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically."""
    write_text(json.dumps(value, indent=2) + "\n", path)
