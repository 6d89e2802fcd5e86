"""Input that cannot hurt the service, over real HTTP against a real ``regsearch serve --no-auth``
(auth off on purpose: these refusals hold for everyone, and a cross-site form must fail even then).

NaN and Infinity anywhere (422, no 500), a 50 MB body (413 before parsing, no memory spike), a
form POST (415), a 422 that echoes only an excerpt, JSON 404/405 under /v1, concurrent deletes
of one study (one 204, the rest 404); never a 500 (fANOVA on constant values, the dashboard's static
files without Accept-Encoding, with HEAD or Range), HEAD on every GET route, a 404 or 422 that quotes
only a little, a 500 that closes its connection, and a connection closed when its headers stall.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.features import MIN_TRIALS
from tests.support import REGSEARCH, base_env, free_port, kill_group, seed_trials, spawn, wait_healthy, wait_until

SPEC = {"name": "guard-demo", "n_trials": 2, "epochs": 1, "width": 0.25, "data": {"train_size": 300}}
JSON = {"Content-Type": "application/json"}
HEADER_TIMEOUT_S = 1.5


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
                   REGSEARCH_TOKEN_FILE=str(root / "token"), REGSEARCH_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S))
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
    assert wrong.status_code == 405 and wrong.headers["allow"] == "DELETE, GET, HEAD, PATCH"
    assert server.request("PATCH", "/v1/studies").status_code == 405
    assert server.request("TRACE", "/healthz").status_code == 405


def test_concurrent_deletes_of_one_study_answer_204_once(server):
    assert server.request("POST", "/v1/studies", json={**SPEC, "name": "delete-race"}).status_code == 201
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = sorted(pool.map(lambda _: server.request("DELETE", "/v1/studies/delete-race").status_code, range(20)))
    assert codes == [204] + [404] * 19
    assert " 500 " not in server.log()


# -- issue 17: never a 500, and a 5xx never breaks the next request --


def _raw(url: str, request: bytes, timeout: float = 30.0) -> bytes:
    """Send ``request`` on a fresh socket and read until the server closes it (what no client library hides)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_fanova_on_constant_values_answers_200_with_zero_importances_and_says_why(server):
    assert server.request("POST", "/v1/studies", json={**SPEC, "name": "flat", "n_trials": 20}).status_code == 201
    seed_trials(f"sqlite:///{server.root / 'regsearch.db'}", "flat", [0.5] * MIN_TRIALS)
    answers = [server.request("GET", "/v1/studies/flat/importance", params={"evaluator": "fanova"}) for _ in range(2)]
    for response in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body["importances"].values()) == {0.0} and "scored the same value" in body["note"]
    assert answers[0].json() == answers[1].json()
    assert " 500 " not in server.log() and "Traceback" not in server.log()


def test_head_answers_on_every_get_route_as_the_get_would_without_a_body(server):
    schema = server.request("GET", "/openapi.json").json()
    paths = [path.replace("{name}", "flat") for path, item in schema["paths"].items() if "get" in item]
    paths += ["/dashboard", "/static/bundle.js", "/v1/studies/ghost", "/docs"]
    assert len(paths) >= 10
    for path in paths:
        get, head = server.request("GET", path), server.request("HEAD", path)
        assert head.status_code == get.status_code != 405, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path


def test_dashboard_static_files_without_accept_encoding_with_head_and_range(server):
    import optuna_dashboard

    bundle = (Path(optuna_dashboard.__file__).parent / "public" / "bundle.js").read_bytes()
    plain = _raw(server.url, b"GET /static/bundle.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = plain.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-encoding" not in head.lower() and body == bundle
    assert server.request("GET", "/static/bundle.js").headers["content-encoding"] == "gzip"  # when asked for
    assert server.request("HEAD", "/static/bundle.js").status_code == 200
    part = _raw(server.url, b"GET /static/bundle.js HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99\r\nConnection: close\r\n\r\n")
    head, _, body = part.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206") and body == bundle[:100]
    favicon = _raw(server.url, b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert favicon.startswith(b"HTTP/1.1 200")
    assert " 500 " not in server.log()


def test_a_404_quotes_only_a_short_excerpt_of_a_long_path(server):
    for path in ("/v1/studies/" + "x" * 65_000, "/v1/" + "y" * 65_000, "/v1/studies/" + "z" * 65_000 + "/best"):
        response = server.request("GET", path)
        assert response.status_code == 404 and len(response.content) < 400, (path[:20], len(response.content))


def test_a_422_quotes_a_few_unknown_keys_and_counts_the_rest(server):
    item = {f"unknown_key_{index:06d}": 1 for index in range(40_000)}  # about 900 KB, under the body limit
    response = server.request("POST", "/v1/studies", json={**SPEC, "name": "many-keys", "enqueue": [item]})
    assert response.status_code == 422 and len(response.content) < 2_000, len(response.content)
    assert "unknown_key_000000" in response.text and "and 39997 more" in response.text
    top = server.request("POST", "/v1/studies", json={**SPEC, "name": "many-top", **{f"k{index}": 1 for index in range(500)}})
    assert top.status_code == 422 and len(top.content) < 4_000, len(top.content)
    assert top.json()["detail"][-1]["msg"].startswith("and 490 more error(s) not shown")


def test_a_connection_that_does_not_finish_its_headers_is_closed(server):
    started = time.monotonic()
    assert _raw(server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n") == b""  # never finished
    assert HEADER_TIMEOUT_S - 0.5 < time.monotonic() - started < HEADER_TIMEOUT_S + 10
    kept = _raw(server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert kept.startswith(b"HTTP/1.1 200") and kept.count(b"HTTP/1.1") == 1  # answered; the stalled next one closed


def test_an_unexpected_error_is_a_short_500_that_closes_its_connection_and_the_next_request_works(tmp_path):
    """An app that raises, behind the service's ErrorGuard on uvicorn with the service's protocol (without the
    guard, Starlette's 500 lacked ``Connection: close`` and uvicorn then dropped the kept-alive connection)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from service.api.hardening import ErrorGuard, http_protocol

    def boom(_request):
        raise RuntimeError("boom " + "x" * 10_000)

    app = Starlette(routes=[Route("/boom", boom), Route("/ok", lambda _r: PlainTextResponse("ok"))],
                    middleware=[Middleware(ErrorGuard)])  # where create_app puts it: the outermost of its middleware
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, port=port, log_level="critical", http=http_protocol(5.0)))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: uv.started, timeout=30, interval=0.05, what="uvicorn to start")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:  # one kept-alive pool
            for _ in range(3):
                failed = client.get("/boom")
                assert failed.status_code == 500 and failed.headers["connection"] == "close"
                assert len(failed.content) < 200 and "boom" not in failed.text
                assert client.get("/ok").text == "ok"
                assert client.head("/boom").status_code == 500
    finally:
        uv.should_exit = True
        thread.join(10)


def test_every_error_answer_keeps_or_closes_its_connection_so_the_next_request_works(server):
    """One kept-alive client: after each error the next request on the pool succeeds (a 413 closes, saying so)."""
    errors = [("GET", "/v1/nothing", {}, 404), ("PUT", "/v1/studies/x", {"json": {}}, 405),
              ("POST", "/v1/studies", {"content": b"a=1", "headers": {"Content-Type": "text/plain"}}, 415),
              ("POST", "/v1/studies", {"json": {"name": "Not A Slug"}}, 422),
              ("POST", "/v1/studies", {"content": b"x" * 2_000_000, "headers": JSON}, 413),
              ("POST", "/v1/studies", {"content": b"[NaN]", "headers": JSON}, 422)]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for method, path, kwargs, code in errors:
            response = client.request(method, path, **kwargs)
            assert response.status_code == code, (path, response.text[:200])
            assert (response.headers.get("connection") == "close") == (code == 413), (code, response.headers)
            assert client.get("/healthz").status_code == 200
