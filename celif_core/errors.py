"""Errors of the library that callers act on."""


class TrainingError(RuntimeError):
    """The job itself failed (NaN loss, unusable data): retrying it would fail again."""


class DataError(ValueError):
    """Data is missing or malformed (e.g. MNIST files absent); the message names the setting."""
