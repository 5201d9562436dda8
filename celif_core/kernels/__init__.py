"""Fused neuron scans: the compiled CPU extension, the Triton kernel for CUDA, and their loaders.

The C++ sources (``scan_cpu.cpp``: the scans; ``synapse_cpu.cpp``: event-driven synaptic
currents, see ``synapses``) are compiled into one module with ``torch.utils.cpp_extension.load``
the first time a fused kernel runs in a process, and cached by torch under ``$TORCH_EXTENSIONS_DIR``
(default ``~/.cache/torch_extensions``): later processes load the cached library in well under a
second. If the build fails, :func:`load_cpu_extension` logs one warning and returns ``None``, and
``celif_core.functional`` falls back to the reference scan.

CUDA tensors run ``scan_triton.py`` (Triton, compiled by Triton's own JIT on first launch) when
the ``triton`` package imports; :func:`load_triton` returns ``None`` otherwise.

Environment:
    CELIF_DISABLE_FUSED=1   never build or use a fused kernel (reference everywhere)
    CELIF_KERNEL_NATIVE=0   build without ``-march=native`` (e.g. a build cache shared by
                            hosts with different CPUs)
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

from celif_core.catalog import CE_MODES, TE_CE_MODES

log = logging.getLogger(__name__)

# Must match the CeMode enum in scan_cpu.cpp (and the ids in scan_triton.py): the catalog's order.
CE_MODE_IDS = {mode: i for i, mode in enumerate(CE_MODES)}
# The membrane modes under ce_timing "previous" (CE reads U[t-1] before its reset) are kernels
# of their own; the other modes read S[t-1] or TE[t] only, the same in both timings.
PREVIOUS_MODE_IDS = {"membrane": len(CE_MODES), "membrane_te": len(CE_MODES) + 1}


def kernel_mode_id(ce_mode: str, ce_timing: str = "current") -> int:
    """The kernels' mode id for a ``ce_mode`` under a ``ce_timing``."""
    if ce_timing == "previous" and ce_mode in PREVIOUS_MODE_IDS:
        return PREVIOUS_MODE_IDS[ce_mode]
    return CE_MODE_IDS[ce_mode]


# the kernels of these modes read the TE table
TE_MODE_IDS = tuple(
    sorted({kernel_mode_id(m, timing) for m in TE_CE_MODES for timing in ("current", "previous")})
)


_SOURCES = tuple(Path(__file__).with_name(n) for n in ("scan_cpu.cpp", "synapse_cpu.cpp"))
_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "ext": None, "error": None}


def _disabled() -> bool:
    return os.environ.get("CELIF_DISABLE_FUSED", "").strip().lower() in ("1", "true", "yes")


def load_cpu_extension() -> ModuleType | None:
    """Build (first use) or load (cached) the CPU extension; ``None`` if unavailable."""
    if _disabled():
        return None
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            try:
                _state["ext"] = _build()
            except Exception as exc:  # any build/load failure means: use the reference
                _state["error"] = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "celif fused CPU kernel unavailable, falling back to the reference scan: %s",
                    _state["error"],
                )
        return _state["ext"]  # type: ignore[return-value]


def cpu_extension_error() -> str | None:
    """Why the extension is unavailable (after a failed load), else ``None``."""
    if _disabled():
        return "disabled by CELIF_DISABLE_FUSED"
    return _state["error"]  # type: ignore[return-value]


def load_triton() -> ModuleType | None:
    """The Triton scan module, or ``None`` if Triton is not installed or disabled."""
    if _disabled() or _state.get("triton_error") is not None:
        return None  # a failed import is not retried on every scan
    try:
        from celif_core.kernels import scan_triton
    except Exception as exc:  # not installed, or a broken install: use the reference
        _state["triton_error"] = f"{type(exc).__name__}: {exc}"
        log.warning("celif Triton kernel unavailable: %s", _state["triton_error"])
        return None
    return scan_triton


def triton_error() -> str | None:
    """Why the Triton kernel is unavailable (after a failed import), else ``None``."""
    if _disabled():
        return "disabled by CELIF_DISABLE_FUSED"
    return _state.get("triton_error")  # type: ignore[return-value]


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load

    _put_ninja_on_path()

    cflags = ["-O3", "-fopenmp", "-ffp-contract=off"]
    # -ffp-contract=off: no fused multiply-add, so the kernel rounds like the PyTorch
    # reference and spikes match it exactly.
    if os.environ.get("CELIF_KERNEL_NATIVE", "1") != "0":
        cflags.append("-march=native")
    # One build directory per (checkout, source, flags): torch's cache otherwise keys on the
    # name alone, and two checkouts (or an edited source) sharing it rebuild each other's
    # library on every alternate use (ninja sees a changed build file each time).
    digest = hashlib.sha256(f"{' '.join(cflags)}\n".encode())
    for source in _SOURCES:
        digest.update(f"{source.resolve()}\n".encode() + source.read_bytes())
    key = digest.hexdigest()[:12]
    name = f"celif_scan_cpu_{key}"
    return load(
        name=name,
        sources=[str(s) for s in _SOURCES],
        extra_cflags=cflags,
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def _put_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; a venv that is not activated has it only in its bin/."""
    try:
        import ninja  # the PyPI package (a project dependency) ships the binary
    except ImportError:
        return
    bin_dir = str(getattr(ninja, "BIN_DIR", ""))
    path = os.environ.get("PATH", "")
    if bin_dir and bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path


def tune_allocator(top_pad_mb: int = 64) -> bool:
    """Make glibc keep large freed blocks for reuse instead of unmapping them (process-wide).

    By default glibc serves every block over 32 MB with a fresh ``mmap`` and unmaps it on free,
    so each large ``[T, B, N]`` tensor (70 MB at T=784, B=256, N=88) is page-faulted in anew
    on every step. On the 2-core benchmark VM that cost ~7 us per 4 KiB page: allocating and
    filling one such tensor took 116 ms instead of 8 ms. With mmap disabled, big blocks come
    from the heap and are reused; RSS then stays at its peak instead of shrinking.

    Opt-in (a training process calls it once; an API server should not); returns ``False``
    where it does not apply (not Linux/glibc). Equivalent environment, set before start:
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large> MALLOC_TOP_PAD_=<bytes>``.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # <malloc.h>
    ok = mallopt(m_mmap_max, 0) == 1
    ok &= mallopt(m_trim_threshold, 2**31 - 1) == 1
    ok &= mallopt(m_top_pad, top_pad_mb * 2**20) == 1
    return bool(ok)
