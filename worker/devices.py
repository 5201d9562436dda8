"""What devices this host can train on, asked without initialising CUDA in this process.

The worker's main process never imports torch (its pool children fork from it, and CUDA does
not survive a fork), so the question goes to a short-lived interpreter; NVML answers there
(`PYTORCH_NVML_BASED_CUDA_CHECK`), which does not create a CUDA context. About 1.5 s, once per
worker start.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)

PROBE = "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')"
PROBE_TIMEOUT_S = 120.0


def detect_devices() -> tuple[str, ...]:
    """("cpu", "cuda") when torch sees a CUDA device here, else ("cpu",). A probe that fails
    (torch broken, timed out) counts as no CUDA, with a warning: such a host should not take
    GPU jobs."""
    env = dict(os.environ, PYTORCH_NVML_BASED_CUDA_CHECK="1")
    try:
        out = subprocess.run(
            [sys.executable, "-c", PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=True,
        ).stdout.split()
    except (subprocess.SubprocessError, OSError) as exc:
        log.warning("could not ask torch for CUDA devices (%s); assuming none", exc)
        return ("cpu",)
    return ("cpu", "cuda") if out[-1:] == ["cuda"] else ("cpu",)
