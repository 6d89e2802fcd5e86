"""Input that cannot hurt the service, over real HTTP against a real ``regsearch serve --no-auth``
(auth off on purpose: these refusals hold for everyone, and a cross-site form must fail even then).

NaN and Infinity anywhere (422, no 500), a 50 MB body (413 before parsing, no memory spike), a
form POST (415), a 422 that echoes only an excerpt, JSON 404/405 under /v1, and concurrent deletes
of one study (one 204, the rest 404).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import REGSEARCH, base_env, free_port, kill_group, spawn, wait_healthy

SPEC = {"name": "guard-demo", "n_trials": 2, "epochs": 1, "width": 0.25, "data": {"train_size": 300}}
JSON = {"Content-Type": "application/json"}


@dataclasses.dataclass
class Server:
    root: Path
    url: str
    process: subprocess.Popen

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=60, **kwargs)

    def rss_kib(self) -> int:
        """Resident memory of the server process (uvicorn runs in the spawned process itself)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])

    def log(self) -> str:
        return (self.root / "server.log").read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    env = base_env(REGSEARCH_DATABASE_URL=f"sqlite:///{root / 'regsearch.db'}", REGSEARCH_AUTH="true",
                   REGSEARCH_TOKEN_FILE=str(root / "token"))
    port = free_port()
    process = spawn([REGSEARCH, "serve", "--port", str(port), "--workers", "0", "--no-auth"], env, root / "server.log")
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=90)
        yield Server(root=root, url=f"http://127.0.0.1:{port}", process=process)
    finally:
        kill_group(process)


def test_auth_off_says_so_at_start_and_writes_no_token(server):
    assert "AUTH IS OFF" in server.log()
    assert not (server.root / "token").exists()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("where", ["width", "learning_rate", "search_space"])
def test_non_finite_numbers_anywhere_are_a_422(server, number, where):
    value = f'{{"weight_decay": {{"low": {number}, "high": 0.001}}}}' if where == "search_space" else number
    body = f'{{"name": "nan-{where}", "{where}": {value}}}'
    response = server.request("POST", "/v1/studies", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["type"] == "json_invalid" and number.lstrip("-") in error["msg"]
    assert server.request("GET", f"/v1/studies/nan-{where}").status_code == 404


def test_a_422_echoes_only_a_short_excerpt_of_the_input(server):
    response = server.request("POST", "/v1/studies", json={"name": "x" * 100_000, "model": ["y" * 100_000]})
    assert response.status_code == 422
    assert len(response.content) < 2_000
    assert {tuple(error["loc"]) for error in response.json()["detail"]} >= {("body", "name"), ("body", "model")}


def test_a_50_mb_body_is_refused_with_413_before_parsing_and_memory_stays_flat(server):
    before = server.rss_kib()
    huge = b'{"name": "huge", "notes": "' + b"x" * (50 * 1024 * 1024) + b'"}'
    declared = server.request("POST", "/v1/studies", content=huge, headers=JSON)
    assert declared.status_code == 413 and "larger than" in declared.json()["detail"]

    def chunks():  # no Content-Length: the limit counts the streamed bytes
        for start in range(0, len(huge), 1024 * 1024):
            yield huge[start:start + 1024 * 1024]

    try:
        streamed = server.request("POST", "/v1/studies", content=chunks(), headers=JSON)
        assert streamed.status_code == 413
    except httpx.RemoteProtocolError:  # the server answered 413 and closed while we were still sending
        pass
    assert server.rss_kib() - before < 20 * 1024, "the server's memory grew by more than 20 MiB"
    assert server.request("GET", "/v1/studies/huge").status_code == 404
    assert server.request("GET", "/healthz").status_code == 200


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"])
def test_a_cross_site_form_cannot_stop_or_submit_even_with_auth_off(server, content_type):
    assert server.request("POST", "/v1/studies", json={**SPEC, "name": "form-target"}).status_code in (200, 201)
    for path in ("/v1/studies/form-target/stop", "/v1/studies"):
        response = server.request("POST", path, content=b"name=form-target", headers={"Content-Type": content_type})
        assert response.status_code == 415, response.text
        assert "application/json" in response.json()["detail"]
    assert server.request("GET", "/v1/studies/form-target").json()["status"] == "queued"


def test_unknown_v1_paths_and_wrong_methods_get_json_404_and_405(server):
    for path in ("/v1/nothing", "/v1/studies/", "/v1/studies/x/y/z", "/v1"):
        response = server.request("GET", path)
        assert response.status_code == 404 and response.headers["content-type"] == "application/json", path
    wrong = server.request("PUT", "/v1/studies/anything", json={})
    assert wrong.status_code == 405 and wrong.headers["allow"] == "DELETE, GET"
    assert server.request("PATCH", "/v1/studies").status_code == 405
    assert server.request("TRACE", "/healthz").status_code == 405


def test_concurrent_deletes_of_one_study_answer_204_once(server):
    assert server.request("POST", "/v1/studies", json={**SPEC, "name": "delete-race"}).status_code == 201
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = sorted(pool.map(lambda _: server.request("DELETE", "/v1/studies/delete-race").status_code, range(20)))
    assert codes == [204] + [404] * 19
    assert " 500 " not in server.log()
