"""regsearch service: the HTTP API, the Optuna workers and the command-line client.

Import what you need from its modules (``service.api.main.create_app``, ``service.worker.Worker``,
``service.client.RegsearchClient``, ...); importing the package itself loads nothing, so
``regsearch best`` (the client) never pays for FastAPI, Optuna or the database drivers.
"""
