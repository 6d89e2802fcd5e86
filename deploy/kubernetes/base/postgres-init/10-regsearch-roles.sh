#!/bin/sh
# Run once by the postgres image when it initializes an empty volume (/docker-entrypoint-initdb.d), in
# Kubernetes (ConfigMap regsearch-postgres-init) and in docker-compose.yml alike: the login roles of the
# API and the workers, with the passwords of their database URLs. What each role may do is granted by
# the migrations (service/migrations/roles.py); the migration itself runs as POSTGRES_USER, the owner.
# On a database initialized before these roles existed, run the same commands once by hand
# (docs/kubernetes.md, "Database roles").
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v api_password="$API_DB_PASSWORD" -v worker_password="$WORKER_DB_PASSWORD" <<'SQL'
DO $$ BEGIN CREATE ROLE regsearch_api NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE regsearch_worker NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
ALTER ROLE regsearch_api LOGIN PASSWORD :'api_password';
ALTER ROLE regsearch_worker LOGIN PASSWORD :'worker_password';
SQL
