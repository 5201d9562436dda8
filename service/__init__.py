"""The CE-LIF training service: FastAPI app, job service, settings and database."""
