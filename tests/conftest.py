"""Shared fixtures: the real PBC images the tests run on.

By default the tests use ``tests/fixtures/pbc-sample``, 252 real images of the PBC archive with its quirks
(see ``tests/fixtures/README.md``); set ``BCC_DATA_DIR`` to run them on another copy of the PBC data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

#: The committed sample of the PBC archive, used when ``BCC_DATA_DIR`` is not set.
FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "pbc-sample"

#: Temporary folders this session made for ``BCC_RUNS_DIR``/``BCC_CACHE_DIR``; removed when it ends.
_SESSION_TMP: list[str] = []


def pytest_addoption(parser, pluginmanager):
    """With nbval switched off (``-p no:nbval``: unit tests only), accept the nbval options that ``addopts`` sets."""
    if pluginmanager.is_blocked("nbval"):
        group = parser.getgroup("nbval (switched off)")
        group.addoption("--nbval-lax", action="store_true", help="ignored: nbval is switched off")
        group.addoption("--nbval-cell-timeout", action="store", help="ignored: nbval is switched off")


def pytest_configure(config):
    """Settings for the notebooks that nbval executes in their own kernels (they inherit this environment).

    ``BCC_DATA_DIR`` defaults to the committed sample and is made absolute (kernels run inside ``notebooks/``),
    smoke mode is on unless ``BCC_SMOKE`` says otherwise, and training runs go to a temporary ``BCC_RUNS_DIR``,
    not into the repository (likewise the preprocessing cache). Notebooks 04-06 share that folder: 06 reads what
    04 and 05 wrote.
    """
    if os.environ.get("BCC_DATA_DIR"):
        os.environ["BCC_DATA_DIR"] = str(Path(os.environ["BCC_DATA_DIR"]).expanduser().resolve())
    else:
        os.environ["BCC_DATA_DIR"] = str(FIXTURE_DATA)
    os.environ.setdefault("BCC_SMOKE", "1")
    for name, prefix in (("BCC_RUNS_DIR", "bcc-test-runs-"), ("BCC_CACHE_DIR", "bcc-test-cache-")):
        if name not in os.environ:
            os.environ[name] = tempfile.mkdtemp(prefix=prefix)
            _SESSION_TMP.append(os.environ[name])


def pytest_unconfigure(config):
    """Remove the temporary runs and cache folders made in :func:`pytest_configure` (not a user's own)."""
    for path in _SESSION_TMP:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The dataset folder: ``$BCC_DATA_DIR``, else the committed ``tests/fixtures/pbc-sample``; fails if missing."""
    value = os.environ.get("BCC_DATA_DIR") or str(FIXTURE_DATA)
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


@pytest.fixture(scope="module")
def setup_colab():
    """``colab/setup_colab.py`` imported as a module (it is a script beside the package, not part of it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("setup_colab", Path(__file__).resolve().parent.parent / "colab"
                                                  / "setup_colab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first_readable_cells(root: Path, classes, size: int = 96):
    """The first decodable image of each class, preprocessed to ``size`` px: a uint8 NCHW torch batch.

    The sample keeps the archive's unreadable files, so a class's first file may not decode.
    """
    import numpy as np
    import torch

    from bcc_utils.data import read_image
    from bcc_utils.data.scan import ImageReadError
    from bcc_utils.preprocess import preprocess_image

    images = []
    for c in classes:
        for f in sorted((root / c).glob("*.jpg")):
            try:
                images.append(preprocess_image(read_image(f), size))
                break
            except ImageReadError:
                continue
        else:
            raise FileNotFoundError(f"no readable image of class {c} in {root}")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
