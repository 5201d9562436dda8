"""Suite-wide defaults: where MNIST lives (the shared data folder beside the checkout)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("CELIF_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist"))
