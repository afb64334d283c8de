"""bcc_utils — the library behind the *bcc* notebook series.

Classifying microscopic peripheral blood cell images (the PBC dataset of
Acevedo et al. 2020) with deep learning. The notebooks narrate; this package
computes. Every public function is covered by ``tests/`` and reachable from
the command line as ``python -m bcc_utils <command>``.

Imports are kept light here: heavy modules (torch, timm, albumentations) are
imported by the submodules that need them.
"""

from bcc_utils.paths import CLASSES, cache_dir, find_data_dir, smoke_mode

__version__ = "0.1.0"
__all__ = ["CLASSES", "cache_dir", "find_data_dir", "smoke_mode", "__version__"]
