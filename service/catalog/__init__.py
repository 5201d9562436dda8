"""Catalogs of tasks and neuron models, from `celif_core.spec`."""
