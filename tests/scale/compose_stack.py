"""docker-compose.yml, run without Docker: each service's own entrypoint, command and environment
as local processes against a real PostgreSQL.

No Docker engine runs where the tests do, so :class:`ComposeStack` reads the compose file and does
what ``docker compose up`` would, one process per container:

* variables are interpolated the way compose does (``${VAR}``, ``${VAR:-default}``, ``$$``);
* the in-image paths of the entrypoints are mapped to the checkout through the Dockerfile's
  ``WORKDIR`` (the images ``COPY`` the repository's files to the same relative paths);
* ``REGSEARCH_DATABASE_URL`` must point at the compose file's ``postgres`` service and is swapped
  for the test's database, keeping the login of a least-privilege role (service/migrations/roles.py);
  the ``postgres`` service's init scripts (``/docker-entrypoint-initdb.d``) run once against it,
  as the image would on an empty volume; ``--host 0.0.0.0`` becomes 127.0.0.1 and each published port a free one;
* a directory setting (``REGSEARCH_ARTIFACT_URL``) that names a container path is mapped through the
  service's ``volumes``: a named volume becomes one directory under the stack's work directory, shared
  by every service that mounts it; an unmounted path, one private to that container (lost with it);
* ``depends_on`` is honoured: ``service_completed_successfully`` runs the dependency to the end,
  ``service_healthy`` polls the dependency's own healthcheck command;
* services built from the API image run with TensorFlow and Keras made
  unimportable, as in that image, which does not install them.

Nothing here knows what the services are: drift between the compose file and the code (a command
``regsearch`` rejects, a missing variable, an entrypoint that does not exist) fails the tests.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.support import REGSEARCH, ROOT, LocalStack, base_env, kill_group, wait_until

COMPOSE_FILE = ROOT / "docker-compose.yml"
DATABASE_SERVICE = "postgres"
#: What the API image leaves out (docker/requirements-api.txt); its services must run without them.
TRAINING_ONLY_MODULES = ("tensorflow", "keras")

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")

_BLOCKER = f'''"""Made by tests/scale/compose_stack.py: this process runs as if in the API image."""
import sys

class _NotInApiImage:
    blocked = {TRAINING_ONLY_MODULES!r}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {{name!r}} (the API image does not install it)", name=name)
        return None

sys.meta_path.insert(0, _NotInApiImage())
'''


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """Compose's variable interpolation, applied to every string in ``value``."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg")
        current = variables.get(name)
        if op == ":-":
            return current if current else interpolate(arg, variables)
        if op == "-":
            return current if current is not None else interpolate(arg, variables)
        if op in (":?", "?") and not current:
            raise AssertionError(f"docker-compose.yml requires ${{{name}}}: {arg}")
        return current or ""

    return _VARIABLE.sub(substitute, value)


INITDB_DIR = "/docker-entrypoint-initdb.d"
#: The PostgreSQL role each regsearch service logs in as (service/migrations/roles.py); None: the owner (DDL).
SERVICE_ROLES = {"migrate": None, "api": "regsearch_api", "dashboard": "regsearch_api", "worker": "regsearch_worker"}
#: The database's variable holding each role's password, for its init script.
ROLE_PASSWORDS = {"regsearch_api": "API_DB_PASSWORD", "regsearch_worker": "WORKER_DB_PASSWORD"}


def local_database_url(declared: str, test_url: str) -> str:
    """The test's database in place of the stack's: a role's login is kept, the owner's becomes the test's."""
    from sqlalchemy.engine import make_url

    from service.migrations.roles import ROLES

    wanted, test = make_url(declared), make_url(test_url)
    if wanted.username in ROLES:
        test = test.set(username=wanted.username, password=wanted.password)
    return test.render_as_string(hide_password=False)


def run_initdb_scripts(scripts: list[Path], test_url: str, declared_env: Mapping[str, str]) -> None:
    """Run the postgres image's init scripts as its entrypoint would, against the test's database."""
    from sqlalchemy.engine import make_url

    url = make_url(test_url)
    env = {**base_env(), **declared_env, "POSTGRES_USER": url.username or "postgres", "POSTGRES_DB": url.database or "",
           "PGHOST": url.host or "127.0.0.1", "PGPORT": str(url.port or 5432)}
    for script in sorted(scripts):
        result = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"init script {script.name} failed:\n{result.stdout}{result.stderr}"


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle)


def dockerfile_of(service: Mapping[str, Any]) -> Path:
    build = service.get("build")
    assert isinstance(build, dict) and "dockerfile" in build, "every regsearch service builds from a Dockerfile"
    return (ROOT / build.get("context", ".") / build["dockerfile"]).resolve()


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def image_workdir(service: Mapping[str, Any]) -> str:
    workdirs = [args for instruction, args in dockerfile_instructions(dockerfile_of(service)) if instruction == "WORKDIR"]
    assert workdirs, f"{dockerfile_of(service).name} sets no WORKDIR"
    return workdirs[-1].rstrip("/")


def local_path(service: Mapping[str, Any], image_path: str) -> Path:
    """Where a file the image copied from the repository lives in the checkout."""
    workdir = image_workdir(service)
    assert image_path.startswith(workdir + "/"), f"{image_path} is not under the image's WORKDIR {workdir}"
    return ROOT / image_path[len(workdir) + 1 :]


def as_list(command: Any) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def published_ports(service: Mapping[str, Any]) -> list[int]:
    """Container ports a service publishes ("HOST_IP:HOST_PORT:CONTAINER_PORT" and shorter forms)."""
    ports = []
    for entry in service.get("ports", []):
        text = str(entry["target"]) if isinstance(entry, dict) else str(entry)
        ports.append(int(text.rsplit(":", 1)[-1].split("/")[0]))
    return ports


def volume_mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's mounts: container path -> source (a named volume or a host path), short or long syntax."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = (entry.get("source", ""), entry["target"]) if isinstance(entry, dict) else str(entry).split(":")[:2]
        mounts[target.rstrip("/") or "/"] = source
    return mounts


def local_directory_setting(url: str) -> str | None:
    """The container path a directory setting names (a path or file:///path); None for s3:// and the like."""
    if url.startswith("file://"):
        return urlsplit(url).path
    return None if "://" in url else url


def local_environment(stack: Any, name: str, declared: Mapping[str, str], *, blocker_dir: Path | None) -> dict[str, str]:
    """Container ``name``'s environment as a local process of ``stack`` (a compose or Kubernetes stand-in).

    Only what the file declares (nothing of this machine's REGSEARCH_* setup leaks in), the checkout's
    ``regsearch`` first on PATH, the stored models' container path mapped to the stack's directory for
    it, the test's database in place of the ``postgres`` one, and with ``blocker_dir`` (the API image)
    the modules that image lacks made unimportable.
    """
    url = declared.get("REGSEARCH_DATABASE_URL")
    assert url, f"{name!r} has no REGSEARCH_DATABASE_URL"
    host = urlsplit(url).hostname
    assert host == DATABASE_SERVICE, f"{name!r}: REGSEARCH_DATABASE_URL points at {host!r}, not the {DATABASE_SERVICE!r} service"
    env = {key: value for key, value in base_env().items() if not key.startswith("REGSEARCH_")}
    env["PATH"] = os.pathsep.join([str(Path(REGSEARCH).parent), env.get("PATH", "")])
    env["REGSEARCH_ARTIFACT_URL"] = str(stack.workdir / "artifacts")  # stored models: a shared store, never the checkout
    env.update(declared)
    artifacts = local_directory_setting(declared.get("REGSEARCH_ARTIFACT_URL", ""))
    if artifacts:  # the container path -> the volume's (claim's) directory here, never /artifacts of this machine
        env["REGSEARCH_ARTIFACT_URL"] = str(stack.container_path(name, artifacts))
    env.update(stack.extra_env)
    env["REGSEARCH_DATABASE_URL"] = local_database_url(url, stack.database_url)
    if blocker_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker_dir), env.get("PYTHONPATH")]))
    return env


def is_api_image(service: Mapping[str, Any]) -> bool:
    return dockerfile_of(service).name == "api.Dockerfile"


@dataclass
class ComposeStack(LocalStack):
    """``docker compose up`` for the tests: one process per container, on ``database_url``."""

    database_url: str
    workdir: Path
    #: compose variables (what a user would export or put in .env): e.g. short heartbeats.
    variables: dict[str, str] = field(default_factory=dict)
    #: extra environment every service gets (the tests' data directory).
    extra_env: dict[str, str] = field(default_factory=dict)
    compose: dict[str, Any] = field(default_factory=load_compose)
    #: one-shot services run to completion so far, in order (compose runs each once per `up`).
    completed: list[str] = field(default_factory=list)
    database_initialized: bool = False  # the postgres service's init scripts have run

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._blocker_dir = self.workdir / "api-image-site"
        self._blocker_dir.mkdir(exist_ok=True)
        (self._blocker_dir / "sitecustomize.py").write_text(_BLOCKER)

    # --- what compose would compute ---------------------------------------------------------------

    def service(self, name: str) -> dict[str, Any]:
        services = self.compose["services"]
        assert name in services, f"docker-compose.yml has no service {name!r} (has {sorted(services)})"
        return interpolate(services[name], self.variables)

    def container_path(self, name: str, path: str) -> Path:
        """Where ``path`` inside service ``name``'s container lives here: under the named volume (or host
        directory) mounted there, else in the container's own filesystem (lost with the container)."""
        assert path.startswith("/"), f"service {name!r}: {path!r} is not an absolute container path"
        for target, source in sorted(volume_mounts(self.service(name)).items(), key=lambda item: -len(item[0])):
            if path == target or path.startswith(target.rstrip("/") + "/"):
                rest = path[len(target):].lstrip("/")
                if source in (self.compose.get("volumes") or {}):
                    base = self.workdir / "volumes" / source
                else:
                    base = (ROOT / source).resolve()
                return base / rest if rest else base
        return self.workdir / "containers" / name / path.lstrip("/")

    def _localize(self, name: str, args: list[str]) -> list[str]:
        """Container addresses and ports -> this machine's: 0.0.0.0 -> 127.0.0.1, published ports -> free ones."""
        service = self.service(name)
        out = []
        for arg in args:
            if arg == "0.0.0.0":
                arg = "127.0.0.1"
            for container_port in published_ports(service):
                local = str(self.port(name, container_port))
                if arg == str(container_port):
                    arg = local
                arg = re.sub(rf"(?<=:){container_port}(?=\D|$)", local, arg)
            out.append(arg)
        return out

    def argv(self, name: str) -> list[str]:
        """The service's entrypoint + command, with the entrypoint mapped to the checkout."""
        service = self.service(name)
        entrypoint = as_list(service.get("entrypoint"))
        assert entrypoint, f"service {name!r} must declare its entrypoint explicitly"
        script = local_path(service, entrypoint[0])
        assert script.is_file(), f"service {name!r}: entrypoint {entrypoint[0]} -> {script} does not exist"
        assert os.access(script, os.X_OK), f"service {name!r}: entrypoint {script} is not executable"
        command = as_list(service.get("command"))
        assert command, f"service {name!r} must declare its command explicitly"
        return self._localize(name, [str(script), *entrypoint[1:], *command])

    def environment(self, name: str) -> dict[str, str]:
        service = self.service(name)
        declared = service.get("environment") or {}
        if isinstance(declared, list):
            declared = dict(item.split("=", 1) for item in declared)
        declared = {key: "" if value is None else str(value) for key, value in declared.items()}
        return local_environment(self, name, declared, blocker_dir=self._blocker_dir if is_api_image(service) else None)

    # --- running it -------------------------------------------------------------------------------

    def run(self, name: str, timeout: float = 120.0, _seen: set[str] | None = None) -> subprocess.CompletedProcess:
        """A one-shot service, after its dependencies, to completion (``service_completed_successfully``)."""
        self._dependencies(name, _seen if _seen is not None else set())
        result = self.run_to_completion(name, len(self.completed), timeout)
        self.completed.append(name)
        return result

    def healthy(self, name: str) -> bool:
        """Run the service's own healthcheck command once."""
        test = as_list(self.service(name)["healthcheck"]["test"])
        kind, args = test[0], test[1:]
        argv = ["sh", "-c", args[0]] if kind == "CMD-SHELL" else args
        env = self.environment(name)
        result = subprocess.run(self._localize(name, argv), env=env, cwd=ROOT, capture_output=True, timeout=30)
        return result.returncode == 0

    def wait_healthy(self, name: str, timeout: float = 90.0) -> None:
        def check() -> bool:
            for process in self.processes.get(name, []):
                assert process.poll() is None, f"service {name!r} exited with {process.returncode}:\n{self.logs(name)}"
            return self.healthy(name)

        wait_until(check, timeout=timeout, interval=0.5, what=f"service {name!r} to pass its healthcheck")

    def init_database(self) -> None:
        """What the ``postgres`` service's image runs on an empty volume: its mounted init scripts."""
        if self.database_initialized:
            return
        service = self.service(DATABASE_SERVICE)
        scripts = []
        for volume in service.get("volumes", []):
            source, _, target = str(volume).partition(":")
            if target.split(":")[0] == INITDB_DIR:
                scripts += [path for path in (ROOT / source).iterdir() if path.suffix == ".sh"]
        declared = {key: str(value) for key, value in (service.get("environment") or {}).items()}
        run_initdb_scripts(scripts, self.database_url, declared)
        self.database_initialized = True

    def up(self, name: str, scale: int = 1, _seen: set[str] | None = None) -> list[subprocess.Popen]:
        """Start ``name`` after its dependencies, as compose does; the database is the test's."""
        self._dependencies(name, _seen if _seen is not None else set())
        return [self.start(name) for _ in range(scale)]

    def _dependencies(self, name: str, seen: set[str]) -> None:
        """Bring up what ``name`` depends on, each as its condition asks (the database: its init scripts)."""
        for dependency, condition in _depends_on(self.service(name)).items():
            if dependency == DATABASE_SERVICE:
                assert condition == "service_healthy", f"{name!r} must wait for a healthy database"
                self.init_database()
                continue
            if dependency in seen or dependency in self.completed or self.processes.get(dependency):
                continue
            seen.add(dependency)
            if condition == "service_completed_successfully":
                self.run(dependency, _seen=seen)
            else:
                self.up(dependency, _seen=seen)
                if condition == "service_healthy":
                    self.wait_healthy(dependency)

    def kill(self, process: subprocess.Popen, sig: int) -> None:
        """Signal the process's whole group (the container, with everything it started)."""
        kill_group(process, sig, timeout=20)

    def restart(self, name: str, process: subprocess.Popen, sig: int) -> subprocess.Popen:
        self.kill(process, sig)
        self.processes[name].remove(process)
        return self.start(name)


def _depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return {name: "service_started" for name in depends}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in depends.items()}


def wait_for_status(client, name: str, statuses: tuple[str, ...], timeout: float, stack: ComposeStack) -> dict:
    """Poll the API until the study reaches one of ``statuses``; the stack's logs on timeout."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        try:
            response = client.get(f"/v1/studies/{name}")
            if response.status_code == 200:
                body = response.json()
                if body["status"] in statuses:
                    return body
        except Exception:  # noqa: BLE001 - the API may be restarting
            pass
        time.sleep(0.5)
    raise AssertionError(f"study {name!r} did not reach {statuses} in {timeout:.0f}s; last: {body}\n{stack.logs()}")
