"""The job store: what the API (`service`) and the workers (`worker`) share.

Settings, the database models and sessions, the job state machine, the event log, the job
repository, the queue producer and the files of a job's run. It imports neither the API nor the
workers (tests/test_architecture.py checks the import graph), so either side can be deployed,
read and tested without the other.
"""
