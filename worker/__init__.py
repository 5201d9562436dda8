"""Celery workers that train jobs with celif_core."""
