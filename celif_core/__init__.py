"""CE-LIF: spiking neural networks with contextual embedding, for long sequences.

Importing the package loads no torch: the service validates specs with `celif_core.spec`
alone. `build_model` and the trainer import torch when first used.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "validate_spec"]


def __getattr__(name: str) -> Any:
    if name == "build_model":
        from celif_core.models import build_model

        return build_model
    if name == "validate_spec":
        from celif_core.spec import validate_spec

        return validate_spec
    raise AttributeError(f"module 'celif_core' has no attribute {name!r}")
