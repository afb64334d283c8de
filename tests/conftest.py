"""Shared fixtures: the real PBC images the tests run on.

Set ``BCC_DATA_DIR`` to a copy of the PBC data (the 252-image ``pbc-sample``
with the archive's quirks is what CI uses).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config):
    """Settings for the notebooks that nbval executes in their own kernels (they inherit this environment).

    ``BCC_DATA_DIR`` is made absolute (kernels run inside ``notebooks/``), smoke mode is on unless
    ``BCC_SMOKE`` says otherwise, and training runs go to a temporary ``BCC_RUNS_DIR``, not into the
    repository (likewise the preprocessing cache). Notebooks 04-06 share that folder: 06 reads what 04 and 05 wrote.
    """
    if os.environ.get("BCC_DATA_DIR"):
        os.environ["BCC_DATA_DIR"] = str(Path(os.environ["BCC_DATA_DIR"]).expanduser().resolve())
    os.environ.setdefault("BCC_SMOKE", "1")
    if "BCC_RUNS_DIR" not in os.environ:
        os.environ["BCC_RUNS_DIR"] = tempfile.mkdtemp(prefix="bcc-test-runs-")
    if "BCC_CACHE_DIR" not in os.environ:
        os.environ["BCC_CACHE_DIR"] = tempfile.mkdtemp(prefix="bcc-test-cache-")


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread: on a shared 2-core machine that is faster, not slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
