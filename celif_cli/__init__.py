"""The `celif` command: composes the API (`service`), the workers (`worker`) and the local
training commands (`celif_core.cli`); the only package that imports both sides."""
