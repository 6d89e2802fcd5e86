"""Trust, over real HTTP against a real ``regsearch serve`` with auth on (the default).

Every route with no token, an unknown one, a revoked one and each scope; the first start's admin
token file; the token commands; the dashboard read-only behind a read token (forged tell, delete,
rename and create refused, the study intact afterwards); a study name taken in Optuna's tables
outside the service is a 409; and a bounded schemathesis run against the live OpenAPI schema.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import optuna
import pytest
import sqlalchemy as sa

from service.tokens import create_token, read_token_file, revoke_token
from tests.browser import Page
from tests.support import REGSEARCH, ROOT, base_env, free_port, kill_group, seed_trials, spawn, wait_healthy, wait_until

SPEC = {"name": "auth-demo", "n_trials": 2, "epochs": 1, "width": 0.25, "data": {"train_size": 300}}


@dataclasses.dataclass
class Server:
    root: Path
    env: dict[str, str]
    url: str
    process: subprocess.Popen
    tokens: dict[str, str]  # admin | write | read | revoked | unknown

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([REGSEARCH, *args], env={**self.env, "REGSEARCH_URL": self.url, **env},
                              capture_output=True, text=True, timeout=120)

    def request(self, method: str, path: str, token: str | None = None, **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def log(self) -> str:
        return (self.root / "server.log").read_text()


def _factory(server: Server):
    from service.config import Settings
    from service.db import create_engine, session_factory

    return session_factory(create_engine(Settings(database_url=server.env["REGSEARCH_DATABASE_URL"])))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    token_file = root / "config" / "regsearch" / "tokens.json"
    env = base_env(REGSEARCH_DATABASE_URL=f"sqlite:///{root / 'regsearch.db'}", REGSEARCH_AUTH="true",
                   REGSEARCH_TOKEN_FILE=str(token_file), REGSEARCH_WEBHOOK_ALLOWED_HOSTS="hooks.example.com")
    port = free_port()
    process = spawn([REGSEARCH, "serve", "--port", str(port), "--workers", "0"], env, root / "server.log")
    srv = Server(root=root, env=env, url=f"http://127.0.0.1:{port}", process=process, tokens={})
    try:
        wait_healthy(srv.url, timeout=90)
        srv.tokens["admin"] = read_token_file(token_file, srv.url)
        created = srv.cli("token", "create", "--scope", "write", "--name", "test-write")
        assert created.returncode == 0, created.stderr
        srv.tokens["write"] = created.stdout.strip()
        srv.tokens["read"] = create_token(_factory(srv), "read", "test-read")[1]
        srv.tokens["revoked"] = create_token(_factory(srv), "admin", "to-revoke")[1]
        assert srv.cli("token", "revoke", "to-revoke").returncode == 0
        srv.tokens["unknown"] = "rgs_" + "x" * 43
        yield srv
    finally:
        kill_group(process)


def test_first_start_writes_an_owner_only_admin_token_file_and_says_how_to_use_it(server):
    token_file = Path(server.env["REGSEARCH_TOKEN_FILE"])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    log = server.log()
    assert f"kept it in {token_file} under {server.url}" in log and "Authorization: Bearer" in log
    assert f"REGSEARCH_TOKEN=$(regsearch token show --url {server.url})" in log
    assert f"{server.url}/v1/studies" in log  # the hint names where this server listens
    assert server.tokens["admin"] not in log  # the token itself is never logged
    listing = server.cli("token", "list")
    assert listing.returncode == 0, listing.stderr
    assert "admin" in listing.stdout and "test-read" in listing.stdout and "revoked" in listing.stdout
    assert all(token not in listing.stdout for token in server.tokens.values())  # prefixes only
    with sa.create_engine(server.env["REGSEARCH_DATABASE_URL"]).connect() as connection:
        stored = " ".join(str(value) for row in connection.execute(sa.text("SELECT * FROM regsearch_tokens")) for value in row)
    assert server.tokens["admin"] not in stored  # hashed


def test_a_second_start_keeps_the_token_file_and_says_so(server):
    before = Path(server.env["REGSEARCH_TOKEN_FILE"]).read_text()
    port = free_port()
    second = spawn([REGSEARCH, "serve", "--port", str(port), "--workers", "0"], server.env, server.root / "second.log")
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=90)
    finally:
        kill_group(second)
    assert Path(server.env["REGSEARCH_TOKEN_FILE"]).read_text() == before
    restarted = spawn([REGSEARCH, "serve", "--port", server.url.rsplit(":", 1)[1], "--workers", "0"], server.env,
                      server.root / "restart.log")  # a server on this URL already runs: the log is all we need
    try:
        wait_until(lambda: "left alone" in (server.root / "restart.log").read_text(), timeout=90, what="the restart's log")
    finally:
        kill_group(restarted)
    assert Path(server.env["REGSEARCH_TOKEN_FILE"]).read_text() == before


def test_two_servers_on_two_databases_keep_their_own_tokens(server, tmp_path):
    """Another checkout's server (its own database, its own port) starts on the same machine: each quick
    start goes on working with the token of the server it calls."""
    token_file = Path(server.env["REGSEARCH_TOKEN_FILE"])
    env = {**server.env, "REGSEARCH_DATABASE_URL": f"sqlite:///{tmp_path / 'other.db'}"}
    port = free_port()
    other = spawn([REGSEARCH, "serve", "--port", str(port), "--workers", "0"], env, tmp_path / "other.log")
    other_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(other_url, timeout=90)
        other_token = read_token_file(token_file, other_url)
        assert other_token and other_token != server.tokens["admin"]
        assert read_token_file(token_file, server.url) == server.tokens["admin"]  # the first server's entry kept
        for url, token in ((server.url, server.tokens["admin"]), (other_url, other_token)):
            shown = server.cli("token", "show", "--url", url)
            assert (shown.returncode, shown.stdout.strip()) == (0, token), shown.stderr
            submitted = server.cli("submit", "--name", f"two-servers-{url.rsplit(':', 1)[1]}", "--n-trials", "1", "--url", url)
            assert submitted.returncode == 0, submitted.stderr  # the CLI picks the token of the URL it calls
            curl = httpx.get(f"{url}/v1/studies", headers={"Authorization": f"Bearer {shown.stdout.strip()}"}, timeout=30)
            assert curl.status_code == 200 and len(curl.json()["studies"]) >= 1
        assert httpx.get(f"{other_url}/v1/studies", headers={"Authorization": f"Bearer {server.tokens['admin']}"},
                         timeout=30).status_code == 401  # the tokens are the servers' own
        assert server.cli("token", "show", "--url", "http://127.0.0.1:1").returncode == 1
    finally:
        kill_group(other)
    # The other server's study went with its database (a temporary file); this server's is deleted here.
    assert server.request("DELETE", f"/v1/studies/two-servers-{server.url.rsplit(':', 1)[1]}", server.tokens["admin"]).status_code == 204


def test_the_docs_pages_need_no_token_but_the_api_does(server):
    for path in ("/docs", "/redoc", "/openapi.json", "/static-offline-docs/swagger-ui-bundle.js", "/healthz"):
        assert server.request("GET", path).status_code == 200, path
    assert server.request("GET", "/v1/studies").status_code == 401


def test_first_admin_token_is_created_once_when_several_processes_start_together(tmp_path):
    from service.config import Settings
    from service.db import create_engine, migrate, session_factory
    from service.tokens import authenticate, ensure_admin_token, list_tokens

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'race.db'}", token_file=str(tmp_path / "tokens.json"))
    migrate(settings)
    factory = session_factory(create_engine(settings))
    (tmp_path / "tokens.json").write_text("rgs_stale-token-of-another-database\n")  # a bare token of an earlier version
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(ensure_admin_token(factory, settings.token_file))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with factory() as session:
        assert [row.name for row in list_tokens(session)] == ["admin"]
    assert sum(result is not None for result in results) == 1
    assert authenticate(factory, read_token_file(settings.token_file, "http://127.0.0.1:8000")).scope == "admin"
    assert ensure_admin_token(factory, settings.token_file) is None  # not empty any more: nothing written


READS = [("GET", "/v1/studies"), ("GET", "/v1/studies/auth-demo"), ("GET", "/v1/studies/auth-demo/trials"),
         ("GET", "/v1/studies/auth-demo/best")]


def _writes(tag: str) -> list[tuple[str, str, dict]]:
    name = f"auth-{tag}"
    return [("POST", "/v1/studies", {"json": {**SPEC, "name": name}}), ("POST", f"/v1/studies/{name}/stop", {}),
            ("DELETE", f"/v1/studies/{name}", {})]


@pytest.mark.parametrize("who", ["none", "unknown", "revoked"])
def test_every_route_refuses_a_missing_unknown_or_revoked_token_with_401(server, who):
    token = None if who == "none" else server.tokens[who]
    for method, path, kwargs in [*(m + ({},) for m in READS), *_writes("refused")]:
        response = server.request(method, path, token, **kwargs)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "token" in response.json()["detail"]
    assert server.request("GET", "/healthz").status_code == 200  # probes need nothing


def test_read_scope_reads_but_cannot_write(server):
    assert server.request("POST", "/v1/studies", server.tokens["admin"], json=SPEC).status_code in (200, 201)
    for method, path in READS:
        response = server.request(method, path, server.tokens["read"])
        assert response.status_code in (200, 404), (path, response.text)  # best: 404 until a trial completes
    for method, path, kwargs in _writes("read"):
        response = server.request(method, path, server.tokens["read"], **kwargs)
        assert response.status_code == 403, (method, path, response.text)
        assert "needs 'write'" in response.json()["detail"]
    assert server.request("GET", "/v1/studies/auth-read", server.tokens["admin"]).status_code == 404  # nothing created


@pytest.mark.parametrize("who", ["write", "admin"])
def test_write_and_admin_scopes_submit_stop_and_delete(server, who):
    token = server.tokens[who]
    (submit, _), (stop, _), (delete, _) = [((m, p), k) for m, p, k in _writes(who)]
    created = server.request(*submit, token, json={**SPEC, "name": f"auth-{who}"})
    assert created.status_code == 201, created.text
    stopped = server.request(*stop, token)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert server.request(*delete, token).status_code == 204
    assert server.request("GET", f"/v1/studies/auth-{who}", token).status_code == 404


def test_cli_sends_the_token_from_the_file_or_the_environment_and_explains_a_401(server):
    from_file = server.cli("studies", "--json")
    assert from_file.returncode == 0, from_file.stderr
    from_env = server.cli("studies", "--json", REGSEARCH_TOKEN_FILE="/nonexistent", REGSEARCH_TOKEN=server.tokens["read"])
    assert from_env.returncode == 0, from_env.stderr
    refused = server.cli("studies", REGSEARCH_TOKEN_FILE="/nonexistent")
    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1 and "REGSEARCH_TOKEN" in refused.stderr
    read_only = server.cli("submit", "--name", "cli-read", REGSEARCH_TOKEN=server.tokens["read"])
    assert read_only.returncode == 1 and "needs 'write'" in read_only.stderr
    assert len(read_only.stderr.strip().splitlines()) == 1 and "REGSEARCH_TOKEN" in read_only.stderr  # the 403's hint


@pytest.mark.parametrize("url, says", [
    ("http://127.0.0.1:notaport", "bad server URL 'http://127.0.0.1:notaport'"),
    ("http://127.0.0.1:1", "cannot reach the regsearch server at http://127.0.0.1:1"),
    ("ftp://127.0.0.1", "cannot reach the regsearch server at ftp://127.0.0.1"),
])
def test_cli_client_errors_are_one_line_and_exit_1(server, url, says):
    result = server.cli("studies", "--url", url)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"regsearch studies: {says}"), result.stderr


@pytest.mark.parametrize("case", ["width-nan", "learning-rate-inf", "train-width-nan", "yaml-nan", "yaml-inf", "yaml-date",
                                  "yaml-binary", "token-non-ascii", "token-newline", "model-missing-dir", "output-missing-dir"])
def test_cli_bad_input_is_one_line_and_exit_1(server, tmp_path, case):
    """Issue 17: each of these printed a traceback (or, for a token with a line break, 'cannot reach the server')."""
    yaml_values = {"yaml-nan": "width: .nan", "yaml-inf": "learning_rate: -.inf", "yaml-date": "seed: 2026-12-04",
                   "yaml-binary": "name: !!binary aGVsbG8="}
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: cli-bad\n{yaml_values.get(case, '')}\n".replace("name: cli-bad\nname:", "name:"))
    args, env, says = {
        "width-nan": (("submit", "--name", "cli-bad", "--width", "nan"), {}, "--width must be a finite number, got nan"),
        "learning-rate-inf": (("submit", "--name", "cli-bad", "--learning-rate", "inf"), {}, "--learning-rate must be a finite number, got inf"),
        "train-width-nan": (("train", "--width", "nan"), {}, "--width must be a finite number, got nan"),
        "yaml-nan": (("submit", str(spec)), {}, "width must be a finite number, got nan"),
        "yaml-inf": (("submit", str(spec)), {}, "learning_rate must be a finite number, got -inf"),
        "yaml-date": (("submit", str(spec)), {}, "seed must be a number, a string, a list or a mapping, got a YAML date"),
        "yaml-binary": (("submit", str(spec)), {}, "name must be a number, a string, a list or a mapping, got a YAML bytes"),
        "token-non-ascii": (("studies",), {"REGSEARCH_TOKEN": "rgs_tökén"}, "the token (REGSEARCH_TOKEN or the token file) holds"),
        "token-newline": (("studies",), {"REGSEARCH_TOKEN": server.tokens["read"] + "\nX-Injected: 1"}, "the token (REGSEARCH_TOKEN"),
        "model-missing-dir": (("best", "auth-demo", "--model", str(tmp_path / "missing" / "best.keras")), {}, "cannot write"),
        "output-missing-dir": (("trials", "auth-demo", "--csv", "-o", str(tmp_path / "missing" / "t.csv")), {}, "cannot write"),
    }[case]
    result = server.cli(*args, **env)
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert result.stderr.count("\n") == 1 and says in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "cannot reach" not in result.stderr


def test_cli_not_a_regsearch_server_is_one_line(server):
    result = server.cli("studies", "--url", f"{server.url}/dashboard")  # HTML, not the API
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_cli_output_into_a_closed_pipe_ends_quietly(server, reader):
    """``regsearch studies --json | head -1``: no BrokenPipeError traceback; exit 1 when the pipe broke."""
    for index in range(3):
        server.request("POST", "/v1/studies", server.tokens["write"], json={**SPEC, "name": f"pipe-{index}"})
    result = subprocess.run(["bash", "-c", f"set -o pipefail; '{REGSEARCH}' studies --json | {reader}"],
                            env={**server.env, "REGSEARCH_URL": server.url}, capture_output=True, text=True, timeout=120)
    assert result.stderr == "", result.stderr
    assert result.returncode in ((0, 1) if reader.startswith("head") else (1,))  # `true` never reads: always broken
    if reader.startswith("head"):
        assert result.stdout == "[\n"


def _basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()}


def test_dashboard_needs_a_read_token_by_basic_auth_or_bearer(server):
    anonymous = server.request("GET", "/dashboard")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Basic")
    assert anonymous.headers["content-type"].startswith("application/json")
    assert server.request("GET", "/api/studies", headers=_basic(server.tokens["revoked"])).status_code == 401
    assert server.request("GET", "/dashboard", headers=_basic(server.tokens["read"])).status_code == 200
    assert server.request("GET", "/api/studies", server.tokens["read"]).status_code == 200
    with_curl_u = httpx.get(f"{server.url}/api/studies", auth=("", server.tokens["read"]), timeout=30)
    assert with_curl_u.status_code == 200 and "study_summaries" in with_curl_u.json()


def test_report_takes_a_read_token_by_bearer_or_basic_auth(server):
    """The report page (issue 19) is opened from the dashboard's link by a browser: Basic auth works as there."""
    assert server.request("POST", "/v1/studies", server.tokens["admin"], json=SPEC).status_code in (200, 201)
    anonymous = server.request("GET", "/v1/studies/auth-demo/report")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Basic")
    assert server.request("GET", "/v1/studies/auth-demo/report", headers=_basic(server.tokens["revoked"])).status_code == 401
    for headers in (_basic(server.tokens["read"]), {"Authorization": f"Bearer {server.tokens['read']}"}):
        response = server.request("GET", "/v1/studies/auth-demo/report", headers=headers)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert response.headers["content-encoding"] == "gzip" and "Regularization report: auth-demo" in response.text
    saved = server.cli("report", "auth-demo", "-o", str(server.root / "auth-demo.html"), REGSEARCH_TOKEN=server.tokens["read"])
    assert saved.returncode == 0 and "Regularization report: auth-demo" in (server.root / "auth-demo.html").read_text()


def test_dashboard_writes_are_refused_for_everyone_and_the_study_stays_intact(server):
    admin = server.tokens["admin"]
    assert server.request("POST", "/v1/studies", admin, json=SPEC).status_code in (200, 201)
    storage = server.env["REGSEARCH_DATABASE_URL"]
    study = optuna.load_study(study_name=SPEC["name"], storage=storage)
    trial = study.ask()  # a trial "running" in a worker (the queued reference config)
    attrs_before = dict(trial.user_attrs)
    study_id = study._study_id
    before = server.request("GET", f"/v1/studies/{SPEC['name']}", admin).json()
    forged = [
        ("POST", f"/api/trials/{trial._trial_id}/tell", {"state": "complete", "values": [0.99]}),
        ("POST", f"/api/trials/{trial._trial_id}/user-attrs", {"user_attrs": {"gap": 0}}),
        ("PUT", f"/api/studies/{study_id}/note", {"version": 1, "body": "forged"}),
        ("POST", f"/api/studies/{study_id}/rename", {"study_name": "renamed"}),
        ("DELETE", f"/api/studies/{study_id}", None),
        ("POST", "/api/studies", {"study_name": "via-dashboard", "directions": ["minimize"]}),
    ]
    for headers in (_basic(admin), {"Authorization": f"Bearer {admin}"}, {}):
        for method, path, body in forged:
            response = httpx.request(method, f"{server.url}{path}", json=body, headers=headers, timeout=30)
            assert response.status_code == 403, (method, path, response.text)
            assert "read-only" in response.json()["detail"]
    frozen = optuna.load_study(study_name=SPEC["name"], storage=storage).get_trials(deepcopy=False)
    assert [t.state for t in frozen] == [optuna.trial.TrialState.RUNNING] and frozen[0].user_attrs == attrs_before
    assert server.request("GET", f"/v1/studies/{SPEC['name']}/best", admin).status_code == 404  # no forged best
    after = server.request("GET", f"/v1/studies/{SPEC['name']}", admin).json()
    assert after["status"] == before["status"] and after["counts"] == before["counts"]
    names = {summary.study_name for summary in optuna.get_all_study_summaries(storage)}
    assert SPEC["name"] in names and "renamed" not in names and "via-dashboard" not in names


def test_a_study_created_in_optuna_outside_the_service_is_never_adopted(server):
    storage = server.env["REGSEARCH_DATABASE_URL"]
    optuna.create_study(study_name="foreign", storage=storage, direction="minimize")
    response = server.request("POST", "/v1/studies", server.tokens["write"], json={**SPEC, "name": "foreign"})
    assert response.status_code == 409 and "never adopted" in response.json()["detail"]
    assert server.request("GET", "/v1/studies/foreign", server.tokens["read"]).status_code == 404


def test_schemathesis_finds_no_5xx_and_no_schema_violation(server, tmp_path):
    """Every operation, every check, every phase (stateful included), bounded: about 700 cases in well under a
    minute. best (each format), best/model and importance run on a study with complete trials
    (tests/service/schemathesis.toml)."""
    try:
        import schemathesis  # noqa: F401 - run below through this interpreter, whatever venv holds it
    except ImportError:
        pytest.fail("schemathesis is missing: pip install -e '.[dev]'")
    assert server.request("POST", "/v1/studies", server.tokens["admin"],
                          json={**SPEC, "name": "schema-best", "n_trials": 20}).status_code == 201
    seed_trials(server.env["REGSEARCH_DATABASE_URL"], "schema-best", [0.30 + 0.01 * index for index in range(10)])
    st = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"]
    result = subprocess.run(
        [*st, "--config-file", str(ROOT / "tests" / "service" / "schemathesis.toml"),
         "run", f"{server.url}/openapi.json", "--header", f"Authorization: Bearer {server.tokens['admin']}",
         "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
         "--max-examples", "15", "--seed", "1", "--no-color", "--request-timeout", "20"],
        env={**server.env, "SCHEMATHESIS_HOOKS": "tests.service.schemathesis_hooks", "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Stateful" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1], result.stdout[-3000:]
    assert " 500 " not in server.log() and "Traceback" not in server.log()


def test_standalone_dashboard_is_read_only_behind_a_read_token_with_an_open_healthz(server):
    port = free_port()
    dashboard = spawn([REGSEARCH, "dashboard", "--port", str(port)], server.env, server.root / "dashboard.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=90)
        assert httpx.get(f"{url}/dashboard", timeout=30).status_code == 401
        assert httpx.get(f"{url}/dashboard", headers=_basic(server.tokens["read"]), timeout=30).status_code == 200
        refused = httpx.post(f"{url}/api/studies", json={"study_name": "x", "directions": ["minimize"]},
                             headers=_basic(server.tokens["admin"]), timeout=30)
        assert refused.status_code == 403
        form = httpx.post(f"{url}/api/studies", content=b"a=1", timeout=30,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert form.status_code == 415
    finally:
        kill_group(dashboard)


def test_a_revoked_token_stops_working_within_twice_the_auth_cache(server):
    from service.config import Settings

    assert server.request("POST", "/v1/studies", server.tokens["admin"], json={**SPEC, "name": "revocation"}).status_code == 201
    token = create_token(_factory(server), "read", "short-lived")[1]
    for _ in range(3):  # checked once, then trusted from the cache (and served from the read cache)
        assert server.request("GET", "/v1/studies/revocation", token).status_code == 200
    revoke_token(_factory(server), "short-lived")
    time.sleep(2 * Settings().auth_cache_s + 1.0)
    for path in ("/v1/studies/revocation", "/v1/studies/revocation/best", "/v1/studies"):
        assert server.request("GET", path, token).status_code == 401, path


def test_load_best_sends_regsearch_token(server, monkeypatch):
    from trainer import BestConfigUnavailable, load_best

    monkeypatch.setenv("REGSEARCH_TOKEN_FILE", "/nonexistent")
    monkeypatch.delenv("REGSEARCH_TOKEN", raising=False)
    with pytest.raises(BestConfigUnavailable, match="401.*REGSEARCH_TOKEN"):
        load_best(server.url, study="auth-demo")
    monkeypatch.setenv("REGSEARCH_TOKEN", server.tokens["read"])
    assert server.request("POST", "/v1/studies", server.tokens["admin"], json={**SPEC, "name": "load-best"}).status_code == 201
    with pytest.raises(BestConfigUnavailable, match="no best config"):  # authenticated: past auth, no trial yet
        load_best(server.url, study="load-best")


# -- owners (issue 17): a write token changes only its owner's studies; admin all; reading stays open --------

@pytest.fixture(scope="module")
def owners(server):
    """alice's write token (its owner defaults to its name) and bob's (created by the CLI with --owner), each
    with a study of its own, still queued (no worker)."""
    alice = create_token(_factory(server), "write", "alice")[1]
    created = server.cli("token", "create", "--scope", "write", "--name", "bob-laptop", "--owner", "bob")
    assert created.returncode == 0 and "owner bob" in created.stderr, created.stderr
    tokens = {"alice": alice, "bob": created.stdout.strip()}
    for owner, token in tokens.items():
        response = server.request("POST", "/v1/studies", token, json={**SPEC, "name": f"own-{owner}"})
        assert response.status_code == 201 and response.json()["owner"] == owner, response.text
    return tokens


def _refusal(owner: str, action: str, name: str = "") -> str:
    return f"study {name or f'own-{owner}'!r} belongs to {owner!r}; only {owner} or an admin may {action} it"


def test_a_write_token_changes_only_its_owners_studies_and_an_admin_all(server, owners):
    alice, bob, admin = owners["alice"], owners["bob"], server.tokens["admin"]
    other_spec = {**SPEC, "name": "own-bob", "n_trials": 3}
    refused = [("POST", "/v1/studies/own-bob/stop", {}, "stop"), ("DELETE", "/v1/studies/own-bob", {}, "delete"),
               ("POST", "/v1/studies?replace=true", {"json": other_spec}, "replace"),
               ("PATCH", "/v1/studies/own-bob", {"json": {"n_trials": 3}}, "change")]
    for method, path, kwargs, action in refused:
        response = server.request(method, path, alice, **kwargs)
        assert response.status_code == 403 and response.json()["detail"] == _refusal("bob", action), (path, response.text)
    study = server.request("GET", "/v1/studies/own-bob", alice).json()  # reads stay open, the study untouched
    assert (study["owner"], study["status"], study["n_trials"]) == ("bob", "queued", SPEC["n_trials"])
    assert server.request("POST", "/v1/studies", alice, json={**SPEC, "name": "own-bob"}).status_code == 200  # same spec: a read

    assert server.request("DELETE", "/v1/studies/own-bob", bob).status_code == 204  # the owner may
    restore = server.request("POST", "/v1/trash/own-bob/restore", alice)
    assert restore.status_code == 403 and restore.json()["detail"] == _refusal("bob", "restore")
    assert server.request("POST", "/v1/trash/own-bob/restore", bob).json()["owner"] == "bob"
    assert server.request("POST", "/v1/studies/own-alice/stop", alice).json()["status"] == "stopped"

    assert server.request("POST", "/v1/studies/own-bob/stop", admin).json()["status"] == "stopped"  # an admin may act on all
    replaced = server.request("POST", "/v1/studies?replace=true", admin, json=other_spec)
    assert replaced.status_code == 201 and replaced.json()["owner"] == "admin"  # the replacement is its submitter's
    assert server.request("POST", "/v1/studies?replace=true", bob, json={**SPEC, "name": "own-bob"}).status_code == 403
    assert server.request("DELETE", "/v1/studies/own-bob", admin).status_code == 204
    assert server.request("POST", "/v1/trash/own-bob/restore", admin).status_code == 200
    assert server.request("POST", "/v1/studies?replace=true", admin, json={**SPEC, "name": "own-bob"}).status_code == 201
    assert server.request("GET", "/v1/studies/own-bob", admin).json()["owner"] == "admin"


def test_whoami_and_the_owner_filter_and_the_cli_agree(server, owners):
    whoami = server.request("GET", "/v1/whoami", owners["alice"]).json()
    assert whoami == {"token": "alice", "scope": "write", "owner": "alice"}
    assert server.request("GET", "/v1/whoami", server.tokens["read"]).json()["owner"] == "test-read"
    listed = server.request("GET", "/v1/studies?owner=alice", server.tokens["read"]).json()["studies"]
    assert [study["name"] for study in listed] == ["own-alice"]
    bad = server.request("GET", "/v1/studies?owner=Not%20A%20Name", server.tokens["read"])
    assert bad.status_code == 422 and "owner" in bad.text

    mine = server.cli("studies", "--mine", REGSEARCH_TOKEN=owners["alice"])
    assert mine.returncode == 0, mine.stderr
    header, *rows = mine.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "OWNER", "STATUS"]
    assert [row.split()[:2] for row in rows] == [["own-alice", "alice"]]
    refused = server.cli("studies", "delete", "own-alice", REGSEARCH_TOKEN=owners["bob"])
    assert refused.returncode == 1 and _refusal("alice", "delete") in refused.stderr

    listing = server.cli("token", "list", "--json")
    assert {row["name"]: row["owner"] for row in json.loads(listing.stdout)}.items() >= {
        "admin": "admin", "alice": "alice", "bob-laptop": "bob"}.items()


def test_webhooks_are_their_owners_for_a_study_only_its_owner_registers(server, owners):
    alice, bob, admin = owners["alice"], owners["bob"], server.tokens["admin"]
    hook = {"url": "https://hooks.example.com/own", "study": "own-alice"}
    refused = server.request("POST", "/v1/webhooks", bob, json=hook)
    assert refused.status_code == 403 and refused.json()["detail"] == _refusal("alice", "register a webhook for"), refused.text
    created = server.request("POST", "/v1/webhooks", alice, json=hook)
    assert created.status_code == 201 and created.json()["owner"] == "alice" and created.json()["secret"], created.text
    hook_id = created.json()["id"]
    assert hook_id not in [listed["id"] for listed in server.request("GET", "/v1/webhooks", bob).json()["webhooks"]]
    assert server.request("GET", f"/v1/webhooks/{hook_id}/deliveries", bob).status_code == 404
    assert server.request("DELETE", f"/v1/webhooks/{hook_id}", bob).status_code == 404  # not bob's: as if none
    assert hook_id in [listed["id"] for listed in server.request("GET", "/v1/webhooks", admin).json()["webhooks"]]
    assert hook_id in [listed["id"] for listed in server.request("GET", "/v1/webhooks", alice).json()["webhooks"]]
    assert server.request("DELETE", f"/v1/webhooks/{hook_id}", alice).status_code == 204


def test_a_token_without_a_valid_owner_is_refused(server):
    for name, owner in (("CI Job", None), ("ci-job", "Not A Name")):
        with pytest.raises(ValueError, match="owner"):
            create_token(_factory(server), "write", name, owner)


def test_the_dashboard_lists_each_study_with_its_owner(server, owners, chromium):
    from service.api.dashboard_view import listed_name

    api = {study["name"]: study["owner"] for study in server.request("GET", "/v1/studies", owners["alice"]).json()["studies"]}
    assert api["own-alice"] == "alice"
    listing = server.request("GET", "/api/studies", owners["alice"]).json()["study_summaries"]
    shown = {study["study_name"]: {attr["key"]: attr["value"] for attr in study["user_attrs"]}.get("owner") for study in listing}
    service_studies = {name: owner for name, owner in shown.items() if owner is not None}  # not the Optuna-only "foreign"
    assert service_studies == {listed_name(name, owner): owner for name, owner in api.items()}  # the API's, with its owners
    with Page(chromium) as page:
        page.headers(_basic(owners["alice"]))
        text = page.open(f"{server.url}/dashboard", "document.body.innerText.includes('own-bob') && document.body.innerText")
        assert page.errors == [], page.errors
    assert listed_name("own-alice", "alice") in text and listed_name("own-bob", api["own-bob"]) in text


def test_migrating_a_0006_database_gives_its_tokens_and_studies_the_admin_owner(storage_url):
    from alembic import command

    from service.config import Settings
    from service.db import _alembic_config, head_revision, migrate

    engine = sa.create_engine(storage_url)
    try:
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "0006")
            connection.execute(sa.text("INSERT INTO regsearch_tokens (name, scope, token_hash, prefix, created_at) "
                                       "VALUES ('ci', 'write', 'hash', 'rgs_x', CURRENT_TIMESTAMP)"))
            connection.execute(sa.text(
                "INSERT INTO regsearch_studies (name, spec, status, n_trials, claimed, claims_total, failed_trials, created_at) "
                "VALUES ('old', '{}', 'completed', 1, 0, 0, 0, CURRENT_TIMESTAMP)"))
        assert migrate(Settings(database_url=storage_url)) == head_revision()
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT owner FROM regsearch_tokens")).scalars().all() == ["admin"]
            assert connection.execute(sa.text("SELECT owner FROM regsearch_studies")).scalars().all() == ["admin"]
    finally:
        engine.dispose()
