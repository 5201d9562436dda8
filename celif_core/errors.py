"""Errors of the library that callers act on."""


class TrainingError(RuntimeError):
    """The job itself failed (NaN loss, unusable data): retrying it would fail again."""


class DataError(ValueError):
    """Data is missing or malformed (e.g. MNIST files absent); the message names the setting."""


_OOM_MESSAGES = ("can't allocate memory", "out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation the caller asked for and the machine refused (CPU or CUDA): retrying asks
    for the same memory again. (No torch import: torch.OutOfMemoryError is matched by name.)"""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)
