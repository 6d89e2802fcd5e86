#!/bin/sh
# Entrypoint of every regsearch container (API, migrations, dashboard, GPU worker).
#
# It checks the one setting without which a container would silently work on its own private
# SQLite file instead of the shared database, sets quiet TensorFlow logging, and then execs the
# service's command so that it runs as the container's main process and receives SIGTERM from
# `docker compose stop` directly (compose runs it under `init: true`, which reaps and forwards).
set -eu

: "${REGSEARCH_DATABASE_URL:?must point every container at the shared PostgreSQL, e.g. postgresql+psycopg://regsearch:PASSWORD@postgres:5432/regsearch}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

if [ "$#" -eq 0 ]; then
  echo "entrypoint.sh: no command given (expected e.g. 'regsearch worker')" >&2
  exit 64
fi
exec "$@"
