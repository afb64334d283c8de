"""Paths shown in committed notebook outputs and messages: short, and never a machine's own prefix."""

from __future__ import annotations

import os
import re
from pathlib import Path


def show_path(path: str | os.PathLike, keep: int = 2) -> str:
    """A path shortened for display in committed outputs.

    Relative paths are returned as they are. An absolute path is shown relative
    to the working directory when it lies below it, else as ``…/`` followed by its
    last ``keep`` components, so that no machine-specific prefix is printed.

    Examples
    --------
    >>> show_path("../runs")
    '../runs'
    >>> show_path("/data/pbc-sample/PBC_dataset_normal_DIB")
    '…/pbc-sample/PBC_dataset_normal_DIB'
    """
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        pass
    parts = p.parts[1:]
    tail = "/".join(parts[-keep:]) if keep > 0 else ""
    return f"…/{tail}" if len(parts) > keep else "/" + "/".join(parts)


_ABSOLUTE = re.compile(r"(?<![\w.~:/])(/[^\s:'\",;()]+)")


def shorten_paths(text: str, keep: int = 3) -> str:
    """Replace every absolute path inside ``text`` by :func:`show_path` (``keep`` last components).

    URLs are left alone. Used for messages from the library, which name files in full.
    """
    return _ABSOLUTE.sub(lambda m: show_path(m.group(1), keep), text)
