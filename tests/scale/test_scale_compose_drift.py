"""docker-compose.yml and the docker/ images against the code they run: fast, structural checks.

Each check names what drifted: a command ``regsearch`` would reject, a variable no setting reads,
an entrypoint the image does not contain, a port the command does not listen on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import pytest

from service.cli import COMMANDS, build_parser
from service.config import Settings
from service.migrations.roles import ROLES
from tests.scale.compose_stack import (
    DATABASE_SERVICE,
    INITDB_DIR,
    ROLE_PASSWORDS,
    SERVICE_ROLES,
    ComposeStack,
    as_list,
    dockerfile_instructions,
    dockerfile_of,
    image_workdir,
    interpolate,
    load_compose,
    local_directory_setting,
    local_path,
    published_ports,
    volume_mounts,
)
from tests.support import ROOT, base_env

COMPOSE = load_compose()
SERVICES = COMPOSE["services"]
REGSEARCH_SERVICES = sorted(name for name in SERVICES if name != DATABASE_SERVICE)
RESOLVED = {name: interpolate(service, {}) for name, service in SERVICES.items()}  # compose's defaults


def test_topology_declares_database_migrations_api_dashboard_and_workers():
    assert {"postgres", "migrate", "api", "dashboard", "worker"} <= set(SERVICES)
    postgres = RESOLVED["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(as_list(postgres["healthcheck"]["test"]))
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in COMPOSE["volumes"], "the database lives on a named volume"
    assert RESOLVED["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "dashboard", "worker"):
        assert RESOLVED[name]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}, name


@pytest.mark.parametrize("name", REGSEARCH_SERVICES)
def test_each_command_is_one_regsearch_accepts(name):
    command = as_list(RESOLVED[name]["command"])
    assert command[0] == "regsearch", f"{name}: the command must be the regsearch CLI, got {command}"
    assert command[1] in COMMANDS, f"{name}: regsearch has no subcommand {command[1]!r}"
    try:
        build_parser(command[1]).parse_args(command[1:])
    except SystemExit as error:
        pytest.fail(f"{name}: `{' '.join(command)}` is rejected by regsearch (exit {error.code})")


@pytest.mark.parametrize("name", REGSEARCH_SERVICES)
def test_each_environment_names_only_real_settings(name):
    environment = RESOLVED[name]["environment"]
    known = {f"REGSEARCH_{field.upper()}" for field in Settings.model_fields}
    unknown = sorted(key for key in environment if key.startswith("REGSEARCH_") and key not in known)
    assert not unknown, f"{name}: no setting reads {unknown} (service/config.py has {sorted(known)})"
    Settings(**{key[len("REGSEARCH_"):].lower(): value for key, value in environment.items() if key in known})
    postgres = RESOLVED["postgres"]["environment"]
    role = SERVICE_ROLES[name.split("-", 1)[0]]  # worker-jax: the worker on another backend, the worker's role
    user, password = (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]) if role is None else (role, postgres[ROLE_PASSWORDS[role]])
    expected = f"postgresql+psycopg://{user}:{password}@{DATABASE_SERVICE}:5432/{postgres['POSTGRES_DB']}"
    assert environment["REGSEARCH_DATABASE_URL"] == expected, f"{name} must use the compose database as {user}"
    assert environment["REGSEARCH_MIGRATE_ON_START"] == "false", f"{name}: the migrate service migrates, nothing else"
    assert ("REGSEARCH_ADMIN_TOKEN" in environment) == (name in ("migrate", "api")), f"{name}: the admin token goes to migrate and api only"


def test_postgres_init_script_creates_each_role_with_the_password_of_its_url():
    """The script the postgres service mounts at /docker-entrypoint-initdb.d (Kubernetes mounts the same file)."""
    postgres = RESOLVED["postgres"]
    (mount,) = [volume for volume in postgres["volumes"] if volume.split(":")[1] == INITDB_DIR]
    scripts = sorted((ROOT / mount.split(":")[0]).glob("*.sh"))
    assert scripts and all(script.stat().st_mode & 0o111 for script in scripts)
    text = "\n".join(script.read_text() for script in scripts)
    for role, variable in ROLE_PASSWORDS.items():
        assert f"ALTER ROLE {role} LOGIN PASSWORD" in text and f'"${variable}"' in text, role
        assert variable in postgres["environment"], variable
    assert set(SERVICE_ROLES.values()) - {None} == set(ROLES)


@pytest.mark.parametrize("name", REGSEARCH_SERVICES)
def test_each_entrypoint_is_in_its_image(name):
    service = RESOLVED[name]
    dockerfile = dockerfile_of(service)
    assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
    entrypoint = as_list(service["entrypoint"])
    script = local_path(service, entrypoint[0])
    assert script.is_file() and script.stat().st_mode & 0o111, f"{name}: {script} is missing or not executable"
    relative = script.relative_to(ROOT).as_posix()
    copies = [args.split() for instruction, args in dockerfile_instructions(dockerfile) if instruction == "COPY"]
    assert any(parts[0] in (relative, "docker", "docker/", ".") for parts in copies), f"{dockerfile.name} does not COPY {relative}"
    declared = [args for instruction, args in dockerfile_instructions(dockerfile) if instruction == "ENTRYPOINT"]
    assert declared and entrypoint[0] in declared[-1], f"{dockerfile.name}'s ENTRYPOINT differs from the compose file's"
    assert image_workdir(service) == "/app"


def test_worker_reserves_a_gpu_and_scales():
    worker = RESOLVED["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "container_name" not in worker and "ports" not in worker, "--scale worker=N needs no fixed name or port"
    instructions = dockerfile_instructions(dockerfile_of(worker))
    base = next(args for instruction, args in instructions if instruction == "FROM")
    default_version = next(args.split("=", 1)[1] for instruction, args in instructions if instruction == "ARG" and args.startswith("TENSORFLOW_VERSION="))
    assert base == "tensorflow/tensorflow:${TENSORFLOW_VERSION}-gpu"
    assert worker["build"]["args"]["TENSORFLOW_VERSION"] == default_version
    import importlib.metadata

    installed = importlib.metadata.version("tensorflow")
    assert default_version.split(".")[:2] == installed.split(".")[:2], "the worker image runs the TensorFlow the tests run"


def test_jax_worker_is_the_worker_on_another_image_with_the_tested_jax_and_keras():
    """worker-jax differs from worker in its image alone (the YAML merges one into the other); its Dockerfile
    installs the jax and keras the trainer tests run on (make test runs tests/trainer on JAX)."""
    worker, jax_worker = RESOLVED["worker"], RESOLVED["worker-jax"]
    assert {key: value for key, value in jax_worker.items() if key not in ("build", "image", "profiles")} == {
        key: value for key, value in worker.items() if key not in ("build", "image")
    }
    assert jax_worker["profiles"] == ["jax"], "opt-in: `docker compose --profile jax up`"
    instructions = dockerfile_instructions(dockerfile_of(jax_worker))
    defaults = dict(args.split("=", 1) for instruction, args in instructions if instruction == "ARG")
    assert jax_worker["build"]["args"] == {name: defaults[name] for name in ("JAX_VERSION", "KERAS_VERSION")}
    environment = " ".join(args for instruction, args in instructions if instruction == "ENV").split()
    assert "KERAS_BACKEND=jax" in environment
    import importlib.metadata

    for package, name in (("jax", "JAX_VERSION"), ("keras", "KERAS_VERSION")):
        installed = importlib.metadata.version(package)
        assert defaults[name].split(".")[:2] == installed.split(".")[:2], f"the JAX worker image runs the {package} the tests run"


@pytest.mark.parametrize("name", ["api", "dashboard"])
def test_published_port_is_the_one_the_command_listens_on(name):
    service = RESOLVED[name]
    command = as_list(service["command"])
    port = int(command[command.index("--port") + 1])
    assert published_ports(service) == [port]
    assert command[command.index("--host") + 1] == "0.0.0.0", "inside a container the server must listen on all interfaces"
    assert f":{port}/" in " ".join(as_list(service["healthcheck"]["test"]))


def test_api_image_installs_everything_but_the_training_stack():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]

    def name(requirement: str) -> str:
        return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    requirements = [line for line in (ROOT / "docker" / "requirements-api.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert all("==" in line for line in requirements), "the API image pins its dependencies"
    assert {name(line) for line in requirements} == {name(dep) for dep in declared} - {"tensorflow", "keras"}
    instructions = dockerfile_instructions(ROOT / "docker" / "api.Dockerfile")
    assert ("FROM", "python:3.11-slim") in instructions
    assert any(instruction == "RUN" and "--no-deps ." in args for instruction, args in instructions)


def test_entrypoint_refuses_to_start_without_the_shared_database():
    env = {key: value for key, value in base_env().items() if key != "REGSEARCH_DATABASE_URL"}
    result = subprocess.run([str(ROOT / "docker" / "entrypoint.sh"), "true"], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "REGSEARCH_DATABASE_URL" in result.stderr
    env["REGSEARCH_DATABASE_URL"] = "postgresql+psycopg://u:p@db:5432/x"
    result = subprocess.run([str(ROOT / "docker" / "entrypoint.sh"), "sh", "-c", "echo $TF_CPP_MIN_LOG_LEVEL"], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "2"


def test_dockerignore_keeps_local_state_out_of_the_images():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "*.db", "tests"} <= set(ignored)


def test_stack_maps_every_service_to_a_local_process(tmp_path):
    """The harness itself: each service resolves to an existing script, the test database and local ports."""
    stack = ComposeStack("postgresql+psycopg://postgres@127.0.0.1:5432/x", tmp_path)
    for name in REGSEARCH_SERVICES:
        argv = stack.argv(name)
        assert argv[0] == str(ROOT / "docker" / "entrypoint.sh") and argv[1] == "regsearch"
        assert "0.0.0.0" not in argv
        assert stack.environment(name)["REGSEARCH_DATABASE_URL"].endswith("/x")
    assert str(stack.port("api", 8000)) in stack.argv("api")


def test_compose_file_passes_compose_schema_validation():
    """Debian's docker-compose (1.29, Python) validates a compose file without a Docker engine; ``make test``
    installs it once before the tests (the Makefile's ``test-tools``)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose (Debian package) is not installed: `make test-tools` installs it")
    result = subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_api_and_workers_keep_models_on_one_named_volume_uid_10001_can_write(tmp_path):
    """REGSEARCH_ARTIFACT_URL: the same for every service, a path the api and worker mount from one named volume,
    created in both images owned by the images' user (a fresh named volume takes the directory's owner)."""
    urls = {name: RESOLVED[name]["environment"]["REGSEARCH_ARTIFACT_URL"] for name in REGSEARCH_SERVICES}
    assert len(set(urls.values())) == 1, f"the services disagree on the artifact store: {urls}"
    path = local_directory_setting(urls["api"])
    assert path, f"compose keeps the models on its volume, got {urls['api']!r} (docs/deployment.md names the S3 alternative)"
    sources = {name: volume_mounts(RESOLVED[name]).get(path) for name in ("api", "worker")}
    assert sources["api"] == sources["worker"] and sources["api"] in COMPOSE["volumes"], f"api and worker must mount one named volume at {path}: {sources}"
    for name in ("api", "worker"):
        dockerfile = dockerfile_of(RESOLVED[name])
        runs = " ".join(args for instruction, args in dockerfile_instructions(dockerfile) if instruction == "RUN")
        owner = next(args for instruction, args in dockerfile_instructions(dockerfile) if instruction == "USER").split(":")[0]
        user = re.search(rf"useradd [^&]*--uid {owner}\b[^&]*\s(\w+)\s*(?:&&|$)", runs).group(1)  # the name useradd gives it
        assert re.search(rf"mkdir -p [^&]*{re.escape(path)}(\s|$)", runs), f"{dockerfile.name} does not create {path}"
        assert re.search(rf"chown (?:{user}|{owner})(?::\S+)? [^&]*{re.escape(path)}(\s|$)", runs), f"{dockerfile.name}: {path} is not owned by uid {owner}"
    # The harness: both processes share one directory under the stack's work directory, never this machine's /artifacts.
    stack = ComposeStack("postgresql+psycopg://postgres@127.0.0.1:5432/x", tmp_path)
    local = {name: stack.environment(name)["REGSEARCH_ARTIFACT_URL"] for name in REGSEARCH_SERVICES}
    assert local["api"] == local["worker"] == str(tmp_path / "volumes" / sources["api"]), local
    assert all(value.startswith(str(tmp_path)) for value in local.values()), local
    assert local["dashboard"] != local["api"], "a service without the volume has its own (unshared) directory"
