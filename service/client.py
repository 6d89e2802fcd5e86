"""A small HTTP client for the regsearch API (used by ``regsearch submit|watch|best|studies|trials|importance|report|webhooks``)."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["ClientError", "RegsearchClient", "error_message", "find_token"]


class ClientError(Exception):
    """A failed request, with a one-line message fit for a terminal (``status`` is None if unreachable)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def error_message(response: httpx.Response) -> str:
    """The API's error as one line: ``detail`` as is, or each validation error as ``field: reason``."""
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, list):
        parts = []
        for item in detail:
            location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
            parts.append(f"{location}: {item.get('msg', 'invalid')}" if location else str(item.get("msg")))
        return "; ".join(parts)
    if detail:
        return str(detail)
    return f"HTTP {response.status_code} {response.reason_phrase}"


def find_token(url: str | None = None) -> str | None:
    """The token to send to the server at ``url``: ``REGSEARCH_TOKEN``, else the token file's entry for that
    server (``REGSEARCH_TOKEN_FILE``; the first start of each server writes its own)."""
    from service.config import get_settings
    from trainer._service_token import token_for

    settings = get_settings()
    return settings.token or token_for(url or settings.url, settings.token_file)


class RegsearchClient:
    """``token``: sent as ``Authorization: Bearer``; default :func:`find_token`."""

    def __init__(self, url: str | None = None, timeout: float = 30.0, token: str | None = None) -> None:
        if url is None:
            from service.config import get_settings

            url = get_settings().url
        self.url = url.rstrip("/")
        token = token or find_token(self.url)
        if token and not (token.isascii() and token.isprintable() and " " not in token):
            raise ClientError("the token (REGSEARCH_TOKEN or the token file) holds a space, a line break or a "
                              "non-ASCII character; a regsearch token is one word of ASCII letters, digits, _ and -")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)
        except httpx.InvalidURL as error:
            raise ClientError(f"bad server URL {url!r} ({error}); expected e.g. http://127.0.0.1:8000") from None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RegsearchClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, expect: str = "application/json", **kwargs: Any) -> httpx.Response:
        """One request; an error answer or one of another content type than ``expect`` is a :class:`ClientError`."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ClientError(f"cannot reach the regsearch server at {self.url} ({error.__class__.__name__}: {error})") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
            raise ClientError(f"bad request URL {self.url}{path} ({error})") from None
        if response.status_code >= 400:
            message = error_message(response)
            if response.status_code in (401, 403):
                message += " (set REGSEARCH_TOKEN to a token of enough scope: regsearch token create --scope write)"
            raise ClientError(message, response.status_code)
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith(expect) and response.status_code != 204:
            raise ClientError(f"{self.url} does not look like a regsearch server (it answered {path} with "
                              f"{content_type or 'no content type'}, not {expect})")
        if expect == "application/json" and response.status_code != 204:
            try:
                response.json()
            except ValueError:
                raise ClientError(f"the server at {self.url} answered {path} with malformed JSON") from None
        return response

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz").json()

    def submit(self, spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Submit a study; return ``(study, created)`` (created is False for an identical repeat)."""
        response = self._request("POST", "/v1/studies", json=spec)
        return response.json(), response.status_code == 201

    def studies(self, owner: str | None = None) -> list[dict[str, Any]]:
        """The studies (``owner``'s alone if given)."""
        return self._request("GET", "/v1/studies", params=_owner(owner)).json()["studies"]

    def whoami(self) -> dict[str, Any]:
        """The token this client sends, as the server sees it: ``token`` (its name), ``scope``, ``owner``."""
        return self._request("GET", "/v1/whoami").json()

    def study(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/studies/{name}").json()

    def trials(self, name: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/v1/studies/{name}/trials").json()["trials"]

    def best(self, name: str, output_format: str = "json") -> Any:
        """The best config: a dict for json and keras, the snippet's text for python."""
        expect = "text/x-python" if output_format == "python" else "application/json"
        response = self._request("GET", f"/v1/studies/{name}/best", params={"format": output_format}, expect=expect)
        return response.text if output_format == "python" else response.json()

    # -- issue 11 --
    def export_trials(self, name: str, output_format: str, out) -> None:
        """Stream ``GET /trials?format=csv|json`` into the text file object ``out``."""
        try:
            with self._http.stream("GET", f"/v1/studies/{name}/trials", params={"format": output_format}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(error_message(response), response.status_code)
                for chunk in response.iter_text():
                    out.write(chunk)
        except httpx.TransportError as error:
            raise ClientError(f"cannot reach the regsearch server at {self.url} ({error.__class__.__name__}: {error})") from None

    def best_model(self, name: str, path: str) -> dict[str, str]:
        """Download the best trial's ``.keras`` file to ``path``; return the response headers."""
        response = self._request("GET", f"/v1/studies/{name}/best/model", expect="application/octet-stream")
        try:
            with open(path, "wb") as file:
                file.write(response.content)
        except OSError as error:
            raise ClientError(f"cannot write {path}: {error.strerror}") from None
        return dict(response.headers)

    def report(self, name: str) -> str:
        """The study's report page (``GET /v1/studies/NAME/report``): one self-contained HTML document."""
        return self._request("GET", f"/v1/studies/{name}/report", expect="text/html").text

    def importance(self, name: str, evaluator: str = "ped-anova") -> dict[str, Any]:
        return self._request("GET", f"/v1/studies/{name}/importance", params={"evaluator": evaluator}).json()

    def edit(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        return self._request("PATCH", f"/v1/studies/{name}", json=changes).json()

    def stop(self, name: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/studies/{name}/stop").json()

    def delete(self, name: str) -> None:
        self._request("DELETE", f"/v1/studies/{name}")

    def trash(self, owner: str | None = None) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/trash", params=_owner(owner)).json()["studies"]

    def restore(self, name: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/trash/{name}/restore").json()

    def purge(self, name: str) -> None:
        self._request("DELETE", f"/v1/trash/{name}")

    def add_webhook(self, url: str, events: list[str] | None = None, study: str | None = None) -> dict[str, Any]:
        """Register a webhook; the answer holds its secret (shown only this once)."""
        body: dict[str, Any] = {"url": url, "study": study}
        if events:
            body["events"] = events
        return self._request("POST", "/v1/webhooks", json=body).json()

    def webhooks(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/webhooks").json()["webhooks"]

    def remove_webhook(self, hook_id: int) -> None:
        self._request("DELETE", f"/v1/webhooks/{hook_id}")

    def webhook_deliveries(self, hook_id: int, limit: int = 100) -> list[dict[str, Any]]:
        return self._request("GET", f"/v1/webhooks/{hook_id}/deliveries", params={"limit": limit}).json()["deliveries"]


def _owner(owner: str | None) -> dict[str, str]:
    return {} if owner is None else {"owner": owner}
