"""Training jobs: submit, list, read, cancel, metrics, events, curves, checkpoints."""
