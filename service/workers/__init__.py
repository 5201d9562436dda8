"""The worker registry over HTTP: GET /api/v1/workers."""
