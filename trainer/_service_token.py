"""The regsearch service's token file on this machine: one bootstrap token per server, keyed by its URL.

The first start of a ``regsearch serve`` writes the admin token it created under its own URL; the
command-line client and :func:`trainer.load_best` read the token of the URL they call. So two servers on
one machine (two checkouts, two databases, two ports) each keep their token, and starting one never
breaks the other's quick start. The file is JSON, mode 0600 in a 0700 directory::

    {"http://127.0.0.1:8000": {"token": "rgs_...", "database": "sqlite:////home/me/a/regsearch.db",
                                "created_at": "2026-12-04T17:00:00Z"}}

Spelled out here, not in the service, because the trainer never imports the service; the service's
writer (:func:`service.tokens.ensure_admin_token`) uses these functions too. A file holding a bare token
(written by hand, or by an earlier version) is read as that token for every server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["default_token_file", "read_entries", "server_key", "token_file", "token_for", "write_entry"]

#: Addresses that all mean "this machine" to a client on it (a server bound to 0.0.0.0 is called on 127.0.0.1).
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::", "::1", ""})


def default_token_file() -> str:
    """``$XDG_CONFIG_HOME/regsearch/tokens.json`` (``~/.config/regsearch/tokens.json``): per user, on this machine."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return str(Path(config_home) / "regsearch" / "tokens.json")


def token_file() -> str:
    """``REGSEARCH_TOKEN_FILE``, else :func:`default_token_file`."""
    return os.environ.get("REGSEARCH_TOKEN_FILE") or default_token_file()


def server_key(url: str) -> str:
    """``scheme://host:port`` of a server URL, with every local address spelled 127.0.0.1 (path dropped)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = (parts.scheme or "http").lower()
    host = (parts.hostname or "").lower()
    host = "127.0.0.1" if host in _LOCAL_HOSTS else host
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (443 if scheme == "https" else 80)
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


def read_entries(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]] | str | None:
    """The file's entries by server key; a bare token (a one-line file) as a string; None if unreadable."""
    try:
        text = Path(path).expanduser().read_text().strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        entries = json.loads(text)
    except ValueError:
        return text.splitlines()[0].strip()
    if not isinstance(entries, dict):
        return None
    return {key: value for key, value in entries.items() if isinstance(value, dict) and isinstance(value.get("token"), str)}


def token_for(url: str, path: str | os.PathLike[str] | None = None) -> str | None:
    """The token the file keeps for the server at ``url`` (a bare-token file: that token), or None."""
    entries = read_entries(path or token_file())
    if isinstance(entries, str) or entries is None:
        return entries
    entry = entries.get(server_key(url))
    return entry["token"] if entry else None


def write_entry(path: str | os.PathLike[str], url: str, token: str, database: str) -> Path:
    """Keep ``token`` as the token of the server at ``url`` (on ``database``), leaving the other servers'
    entries as they are; atomic, readable by the owner only (parent directory 0700)."""
    path = Path(path).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(path):  # two servers starting at once: each entry survives the other's write
        entries = read_entries(path)
        entries = entries if isinstance(entries, dict) else {}
        entries[server_key(url)] = {
            "token": token,
            "database": database,
            "created_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        _replace(path, entries)
    return path


@contextlib.contextmanager
def _locked(path: Path):
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _replace(path: Path, entries: dict[str, Any]) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tokens-")  # created 0600
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(entries, file, indent=2, sort_keys=True)
            file.write("\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
