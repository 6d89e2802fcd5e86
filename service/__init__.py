"""regsearch service: the HTTP API, the Optuna workers and the command-line client."""
