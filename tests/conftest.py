"""Shared fixtures: the real PBC images the tests run on.

Set ``BCC_DATA_DIR`` to a copy of the PBC data (the 252-image ``pbc-sample``
with the archive's quirks is what CI uses).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The dataset folder named by ``$BCC_DATA_DIR``; fails clearly if it is not set or missing."""
    value = os.environ.get("BCC_DATA_DIR")
    if not value:
        pytest.fail(
            "BCC_DATA_DIR is not set: point it at a copy of the PBC data "
            "(e.g. the pbc-sample folder), see README.md > Tests.",
            pytrace=False,
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        pytest.fail(f"BCC_DATA_DIR={value} does not exist or is not a folder.", pytrace=False)
    return path


@pytest.fixture(scope="session")
def sample_root(data_dir: Path) -> Path:
    """The folder that directly holds the eight class folders."""
    from bcc_utils.data import locate_root

    return locate_root(data_dir)
