"""Ad-hoc check of the DRAFT deploy/postgres/0004_roles.py (run from the repository root with the
venv's python; needs the local PostgreSQL, trust auth). Applies the draft on a fresh database at head plus a
stand-in regsearch_tokens table, runs a real worker as a member of regsearch_worker through one tiny
study, then tries what the role must be refused. Drops its database and roles afterwards.
Seen 2026-11-25: worker rc 0, study completed; SELECT tokens, DROP TABLE, DELETE, CREATE TABLE and
UPDATE regsearch_studies.spec refused. The later phase turns this into tests/ once 0003 is merged."""
import importlib.util, os, signal, subprocess, sys, time, uuid
import httpx, sqlalchemy as sa
sys.path.insert(0, os.getcwd())
from tests.support import REGSEARCH, base_env, free_port, spawn, kill_group, wait_healthy

admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
db = f"h12roles_{uuid.uuid4().hex[:8]}"
with admin.connect() as c:
    c.execute(sa.text(f'CREATE DATABASE "{db}"'))
url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
worker_url = f"postgresql+psycopg://h12_worker_login@127.0.0.1:5432/{db}"
procs = []
try:
    subprocess.run([REGSEARCH, "migrate"], env=base_env(REGSEARCH_DATABASE_URL=url), check=True, capture_output=True)
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE regsearch_tokens (id serial primary key, secret text)"))
        c.execute(sa.text("INSERT INTO regsearch_tokens (secret) VALUES ('s3cret')"))
        from alembic.runtime.migration import MigrationContext
        from alembic.operations import Operations
        spec = importlib.util.spec_from_file_location("roles", "deploy/postgres/0004_roles.py")
        roles = importlib.util.module_from_spec(spec)
        ctx = MigrationContext.configure(c)
        with Operations.context(ctx):
            spec.loader.exec_module(roles)
            roles.upgrade()
        c.execute(sa.text("DO $$ BEGIN CREATE ROLE h12_worker_login LOGIN IN ROLE regsearch_worker; EXCEPTION WHEN duplicate_object THEN NULL; END $$"))
    port = free_port()
    api = spawn([REGSEARCH, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "0", "--no-dashboard"], base_env(REGSEARCH_DATABASE_URL=url), log_path="/tmp/regsearch-roles-api.log")
    procs.append(api)
    wait_healthy(f"http://127.0.0.1:{port}", 90)
    spec = {"name": "roles", "model": "baseline", "width": 0.25, "n_trials": 2, "epochs": 1, "batch_size": 64, "sampler": "random", "pruner": "none", "data": {"train_size": 200}, "seed": 1}
    print("post", httpx.post(f"http://127.0.0.1:{port}/v1/studies", json=spec, timeout=30).status_code)
    worker = spawn([REGSEARCH, "worker", "--poll-interval", "1", "--exit-when-idle"], base_env(REGSEARCH_DATABASE_URL=worker_url, REGSEARCH_HEARTBEAT_INTERVAL="2"), log_path="/tmp/regsearch-roles-worker.log")
    procs.append(worker)
    rc = worker.wait(timeout=300)
    print("worker rc", rc)
    print("study", httpx.get(f"http://127.0.0.1:{port}/v1/studies/roles", timeout=30).json()["status"])
    weng = sa.create_engine(worker_url)
    for stmt in ["SELECT * FROM regsearch_tokens", "DROP TABLE regsearch_best_configs", "DELETE FROM regsearch_studies", "DELETE FROM trials", "CREATE TABLE x (a int)", "UPDATE regsearch_studies SET spec = '{}'", "SELECT count(*) FROM trials"]:
        try:
            with weng.begin() as c:
                r = c.execute(sa.text(stmt))
                print("ALLOWED ", stmt, r.fetchall() if r.returns_rows else "")
        except sa.exc.ProgrammingError as e:
            print("refused ", stmt, "->", str(e.orig).splitlines()[0])
    weng.dispose(); eng.dispose()
finally:
    for p in procs:
        kill_group(p, signal.SIGTERM, 20)
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        for r in ("h12_worker_login", "regsearch_worker", "regsearch_api", "regsearch_migrator"):
            c.execute(sa.text(f"DROP ROLE IF EXISTS {r}"))
