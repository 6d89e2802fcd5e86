"""The regularization report (issue 19) over real HTTP, opened by headless Chromium.

One real ``regsearch serve`` (uvicorn) for the module, on one SQLite file; the studies are seeded through
the real worker (:class:`service.worker.Worker`) in this process: a real small study trained with real
Keras networks on the shipped CIFAR-10 subset, a stand-in-trained study whose numbers are known (pruned
trials, 10 complete ones for the importance, confirmation repeats), a running study and one with no
complete trial. Chromium runs behind a proxy that refuses and records every request: a page that asked
for anything off the machine (a CDN) would show it there, and fail to draw.
"""

from __future__ import annotations

import html.parser
import json
import re
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from service.config import Settings
from service.objective import Trained
from service.worker import KerasTraining, Worker
from tests.support import CIFAR_DIR, LocalService, run_workers
from trainer import TrialMetrics

pytestmark = pytest.mark.slow

FIGURES = ("fig-weight-decay", "fig-dropout-conv", "fig-dropout-dense", "fig-gap", "fig-sparsity", "fig-curves",
           "fig-sure", "fig-importance")
REAL = {"name": "report-real", "n_trials": 3, "width": 0.25, "epochs": 2, "batch_size": 64, "data": {"train_size": 200},
        "pruner": "median", "max_gap": 0.5, "confirm": {"top_k": 1, "repeats": 1}}


class RefusingProxy:
    """An HTTP proxy that answers nothing: it records each request line (CONNECT host:443, GET http://...) and hangs up."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    self.requests.append(connection.recv(4096).decode("latin-1").split("\r\n", 1)[0])
                except OSError:
                    self.requests.append("(unreadable)")

    def close(self) -> None:
        self._socket.close()

    def page_requests(self, since: int = 0) -> list[str]:
        """The requests since ``since`` that were not the browser's own (its clock, updater and sign-in services,
        which it calls on start whatever the page)."""
        return [line for line in self.requests[since:] if _host(line) not in BROWSER_SERVICES]


#: What headless Chromium itself asks for on start, flags or not: its network clock, its component updater and
#: its sign-in service. A page's own request (a CDN, a font) is anything else.
BROWSER_SERVICES = frozenset({"clients2.google.com", "update.googleapis.com", "accounts.google.com"})


def _host(request_line: str) -> str:
    """``CONNECT host:443 HTTP/1.1`` or ``GET http://host/path HTTP/1.1`` -> host."""
    from urllib.parse import urlsplit

    target = (request_line.split(" ") + ["", ""])[1]
    return (urlsplit(target).hostname or "") if "://" in target else target.rsplit(":", 1)[0]


class ScriptedTraining:
    """Known scores, no Keras. Search calls 5, 7, ... (after the pruner's 4 start-up trials) are weak: far
    below the others after their second epoch, so the median pruner stops them there; every other trial
    reports the same per-epoch values (never below the median) and ends on its config's quality. Repeat r
    shifts a config's score by a few points; sparsity grows with the L1 share."""

    def __init__(self) -> None:
        self.search_calls = 0
        self.lock = threading.Lock()

    def __call__(self, spec, config, on_epoch_end, seed=None):
        weak = False
        if seed is None:
            with self.lock:
                self.search_calls += 1
                weak = self.search_calls > 4 and self.search_calls % 2 == 1
        quality = 0.5 + 0.3 * config.dropout_conv - 0.05 * config.l1_ratio + (0 if seed is None else 0.01 * (seed % 5) - 0.02)
        for epoch in range(spec.epochs):
            value = 0.3 + 0.1 * epoch - (0.25 if weak else 0.0)
            on_epoch_end(epoch, {"val_accuracy": value, "accuracy": value, "loss": 1.0, "val_loss": 1.1, "gap": 0.05})
        gap = 0.02 + 1e4 * config.weight_decay * 0.001
        return Trained(TrialMetrics(val_accuracy=quality, train_accuracy=quality + gap, gap=gap, sparsity=0.01 + 0.3 * config.l1_ratio,
                                    train_size=180, epochs_run=spec.epochs))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = LocalService.at(tmp_path_factory.mktemp("report"))
    svc.start_server()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def seeded(service):
    """The module's studies, seeded in order (a worker serves whatever is runnable, so each is finished first):
    the real one, the stand-in one, a running one (one of its two trials done), one with no trial at all."""
    settings = Settings(database_url=service.env["REGSEARCH_DATABASE_URL"], heartbeat_interval=1, grace_period=10,
                        poll_interval=0.05, data_dir=str(CIFAR_DIR))
    started = time.monotonic()
    assert service.post("/v1/studies", json=REAL).status_code == 201
    worker = Worker(settings, train=KerasTraining(str(CIFAR_DIR)), exit_when_idle=True, name="report-worker")
    worker.run()
    seconds = time.monotonic() - started
    known = {"name": "report-known", "n_trials": 16, "epochs": 3, "pruner": "median", "max_gap": 0.1,
             "confirm": {"top_k": 2, "repeats": 2}}
    assert service.post("/v1/studies", json=known).status_code == 201
    run_workers(settings, ScriptedTraining(), count=1)
    running = {**REAL, "name": "report-running", "n_trials": 2}
    assert service.post("/v1/studies", json=running).status_code == 201
    assert Worker(settings, train=KerasTraining(str(CIFAR_DIR)), name="report-once").run_once()  # its reference trial
    assert service.post("/v1/studies", json={**REAL, "name": "report-empty"}).status_code == 201
    return {"real_seconds": seconds}


class _Figures(html.parser.HTMLParser):
    """Per report figure (``data-figure``): the markers and bars Plotly drew (SVG elements of class ``point``)."""

    def __init__(self) -> None:
        super().__init__()
        self.points: dict[str, int] = {}
        self._current: list[tuple[str | None, int]] = []  # (figure, depth) stack of open divs

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            self._current.append((attrs.get("data-figure"), 0))
        figure = next((name for name, _ in reversed(self._current) if name), None)
        if figure and "point" in (attrs.get("class") or "").split():
            self.points[figure] = self.points.get(figure, 0) + 1
        if figure and figure not in self.points:
            self.points[figure] = 0

    def handle_endtag(self, tag):
        if tag == "div" and self._current:
            self._current.pop()


def open_in_chromium(chromium: str, target: str, proxy: RefusingProxy, width: int = 1200) -> tuple[_Figures, str, list[str]]:
    """Chromium renders ``target`` (a URL or a file) ``width`` pixels wide: the figures' drawn points, the DOM,
    the console lines."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--disable-quic", "--disable-extensions",
             "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate", "--no-pings",
             f"--proxy-server=http://127.0.0.1:{proxy.port}", f"--user-data-dir={profile}", "--enable-logging=stderr",
             "--v=0", "--virtual-time-budget=15000", f"--window-size={width},1600", "--dump-dom", target],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = _Figures()
    figures.feed(result.stdout)
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return figures, result.stdout, console


@pytest.fixture(scope="module")
def proxy():
    refusing = RefusingProxy()
    yield refusing
    refusing.close()


def _expected_points(service, name: str) -> dict[str, int]:
    """Each figure's markers as the study's own trials (the API's) say they should be."""
    trials = service.get(f"/v1/studies/{name}/trials").json()["trials"]
    search = [t for t in trials if t["stage"] in ("search", "reference", "enqueued")]
    complete = [t for t in search if t["state"] == "complete"]
    pruned = [t for t in search if t["state"] == "pruned" and t["intermediate_values"]]
    confirmed = {t["confirms"] for t in trials if t["stage"] == "confirm" and t["state"] == "complete"}
    epochs = service.get(f"/v1/studies/{name}").json()["spec"]["epochs"]
    importance = service.get(f"/v1/studies/{name}/importance")
    return {
        "fig-weight-decay": len(complete) + len(pruned),
        "fig-dropout-conv": len(complete) + len(pruned),
        "fig-dropout-dense": len(complete) + len(pruned),
        "fig-gap": sum(1 for t in complete if t["gap"] is not None),
        "fig-sparsity": sum(1 for t in complete if t["sparsity"] is not None),
        "fig-curves": len(confirmed) * epochs,
        "fig-sure": len(confirmed),
        **({"fig-importance": len(importance.json()["importances"])} if importance.status_code == 200 else {}),
    }


def _plotted(page: str, figure: str) -> list[dict]:
    """The traces the page hands Plotly for ``figure`` (the JSON of its ``Plotly.newPlot`` call)."""
    match = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(figure) + r'",\s*', page)
    assert match, figure
    return json.JSONDecoder().raw_decode(page, match.end())[0]


def test_a_real_study_s_report_from_the_cli_renders_every_figure_offline(service, seeded, chromium, proxy, tmp_path):
    study = service.get("/v1/studies/report-real").json()
    assert study["status"] == "completed", service.logs()
    saved = service.cli("report", "report-real", "-o", str(tmp_path / "report.html"))
    assert saved.returncode == 0, saved.stderr
    assert "wrote" in saved.stdout and "works offline" in saved.stdout
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "cdn." not in re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', page)  # nothing fetched: all inline

    before = len(proxy.requests)
    figures, dom, console = open_in_chromium(chromium, (tmp_path / "report.html").as_uri(), proxy)
    assert console == [] and proxy.page_requests(before) == []
    expected = _expected_points(service, "report-real")
    assert {name: figures.points.get(name) for name in expected} == expected, dom[-3000:]
    assert "fig-importance" not in figures.points  # 3 trials: the page says why, as the API does
    assert service.get("/v1/studies/report-real/importance").json()["detail"] in dom

    # The values shown are the stored ones: each trial's gap and sparsity (measured by the worker's training).
    trials = {t["number"]: t for t in service.get("/v1/studies/report-real/trials").json()["trials"]}
    complete = sorted(100 * t["gap"] for t in trials.values() if t["state"] == "complete" and t["stage"] != "confirm")
    assert sorted(_plotted(page, "fig-gap")[0]["y"]) == pytest.approx(complete)
    sparsity = sorted(100 * t["sparsity"] for t in trials.values() if t["state"] == "complete" and t["stage"] != "confirm")
    assert sorted(_plotted(page, "fig-sparsity")[0]["y"]) == pytest.approx(sparsity) and all(0 <= s <= 100 for s in sparsity)
    # Every section is there, with its units; final after confirmation.
    for title in ("1. Accuracy against weight decay", "2. Accuracy against each dropout rate", "3. Generalization gap",
                  "4. Sparsity against the L1 share", "5. Learning curves", "6. How sure", "7. Which parameter matters",
                  "8. The hand-off"):
        assert title in dom
    assert "validation accuracy (%)" in dom and "Final: generated" in dom and "max_gap" in dom
    best = service.get("/v1/studies/report-real/best").json()
    assert f"regsearch retrain report-real --url {service.url} --output models/report-real" in dom
    assert f"{best['params']['weight_decay'] * best['train_size'] / 50_000:.3g}" in dom  # the carry-over to 50,000
    print(f"real study seeded in {seeded['real_seconds']:.1f} s")


def test_a_known_study_s_report_draws_pruned_trials_importance_and_how_sure_in_words(service, seeded, chromium, proxy):
    figures, dom, console = open_in_chromium(chromium, f"{service.url}/v1/studies/report-known/report", proxy)
    assert console == [] and proxy.page_requests() == []
    expected = _expected_points(service, "report-known")
    assert set(expected) == set(FIGURES) and {name: figures.points.get(name) for name in FIGURES} == expected
    trials = service.get("/v1/studies/report-known/trials").json()["trials"]
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert len(pruned) == 6 and all(len(t["intermediate_values"]) == 2 for t in pruned)  # stopped after epoch 2 of 3
    assert expected["fig-importance"] == 4 and expected["fig-sure"] == 3  # top 2 and the reference, 3 runs each

    page = service.get("/v1/studies/report-known/report").text
    (pruned_trace,) = [trace for trace in _plotted(page, "fig-weight-decay") if trace["name"].startswith("pruned")]
    assert sorted(pruned_trace["y"]) == pytest.approx(sorted(100 * t["intermediate_values"]["1"] for t in pruned))
    importance = service.get("/v1/studies/report-known/importance").json()["importances"]
    (bars,) = _plotted(page, "fig-importance")
    assert dict(zip(bars["y"], bars["x"])) == pytest.approx({name: 100 * value for name, value in importance.items()})
    # How sure, in words, with the API's numbers.
    best = service.get("/v1/studies/report-known/best").json()
    margin = best["margin"]
    assert margin["low"] is not None and best["confirmed"] is True
    words = (f"The best beats the defaults by {100 * margin['value']:.1f} points, 95 % interval "
             f"{100 * margin['low']:.1f} to {100 * margin['high']:.1f} points")
    assert words in dom
    assert (f"mean validation accuracy of {100 * best['mean']:.1f} % over 3 runs (95 % interval "
            f"{100 * best['ci_low']:.1f} to {100 * best['ci_high']:.1f} %)") in dom
    assert ("No tie" in dom) == (not best["ties"]) and "Confirmed: every candidate has all its 3 runs" in dom


def test_a_running_study_s_report_is_live(service, seeded, chromium, proxy):
    study = service.get("/v1/studies/report-running").json()
    assert study["status"] == "running" and study["counts"]["complete"] == 1
    # At a narrow width (500 px: headless Chromium's narrowest window), every plot fits and the two dropout plots stack.
    figures, dom, console = open_in_chromium(chromium, f"{service.url}/v1/studies/report-running/report", proxy, width=500)
    assert console == [] and proxy.page_requests() == []
    widths = {name: int(width) for name, width in re.findall(r'id="(fig-[a-z-]+)".*?<svg class="main-svg"[^>]* width="(\d+)"', dom)}
    assert set(widths) >= {"fig-weight-decay", "fig-dropout-conv", "fig-dropout-dense"} and max(widths.values()) <= 500 - 2 * 6
    assert widths["fig-dropout-conv"] == widths["fig-dropout-dense"] == widths["fig-weight-decay"]
    assert "Live:" in dom and "1 of 2 search trials finished" in dom
    assert figures.points["fig-weight-decay"] == 1 and figures.points["fig-gap"] == 1  # the reference, so far
    assert "The best is the defaults themselves" in dom


def test_a_study_without_a_complete_trial_gets_a_page_that_says_so(service, seeded):
    response = service.get("/v1/studies/report-empty/report", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.headers["content-encoding"] == "gzip" and response.text.startswith("<!DOCTYPE html>")
    page = response.text
    assert "No complete trial yet" in page and "Nothing to draw yet" in page and "Plotly.newPlot" not in page
    assert "The hand-off appears when a trial has completed." in page
    missing = service.get("/v1/studies/ghost/report")
    assert missing.status_code == 404 and missing.json()["detail"] == "study 'ghost' not found"


def test_the_proxy_catches_a_page_that_asks_the_network(chromium, proxy, tmp_path):
    """The control: a page loading plotly.js from its CDN shows up at the proxy (and is refused)."""
    page = tmp_path / "cdn.html"
    page.write_text('<!DOCTYPE html><html><head><script src="https://cdn.plot.ly/plotly-3.0.1.min.js"></script></head>'
                    "<body><p>cdn</p></body></html>")
    before = len(proxy.requests)
    open_in_chromium(chromium, page.as_uri(), proxy)
    assert [_host(line) for line in proxy.page_requests(before)] == ["cdn.plot.ly"]
