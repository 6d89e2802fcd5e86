"""deploy/kubernetes/: rendered with kustomize, validated against the Kubernetes schemas, and held to
docker-compose.yml, the Dockerfiles and the code (same commands, same settings, same images).

No cluster is needed: ``kubectl kustomize`` renders offline and kubernetes-validate carries the
schemas. Each failure names what drifted.
"""

from __future__ import annotations

import base64

import pytest

from service.cli import COMMANDS, build_parser
from sqlalchemy.engine import make_url

from service.config import Settings
from tests.deploy.kube_stack import (
    BASE,
    OVERLAYS,
    KubeStack,
    by_kind,
    component,
    compose_service_for_image,
    grace_seconds,
    image_repository,
    pod_spec,
    render,
    validate,
    workloads,
)
from service.migrations.roles import ROLES
from tests.support import ROOT
from tests.scale.compose_stack import (
    DATABASE_SERVICE,
    INITDB_DIR,
    ROLE_PASSWORDS,
    SERVICE_ROLES,
    as_list,
    interpolate,
    load_compose,
    local_directory_setting,
    volume_mounts,
)

KUSTOMIZATIONS = [BASE, *OVERLAYS]
RENDERED = {path.relative_to(BASE.parent).as_posix(): render(path) for path in KUSTOMIZATIONS}
BASE_RESOURCES = RENDERED["base"]
COMPOSE = interpolate(load_compose(), {})
SERVICES = COMPOSE["services"]
REGSEARCH_COMPONENTS = ("migrate", "api", "dashboard", "worker")
STACK = KubeStack(BASE_RESOURCES, "postgresql+psycopg://postgres@127.0.0.1:5432/unused", BASE.parent / "never-created")  # structure only: runs nothing


def regsearch_workloads(resources):
    return {component(workload): workload for workload in workloads(resources) if component(workload) in REGSEARCH_COMPONENTS}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_every_rendered_manifest_passes_the_kubernetes_schema(name):
    import kubernetes_validate

    resources = RENDERED[name]
    assert resources, f"{name} renders nothing"
    failures = []
    for resource in resources:
        try:
            validate(resource)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{resource['kind']}/{resource['metadata']['name']}: {error.message} at {list(error.path)}")
    assert not failures, "\n".join(failures)


def test_validation_rejects_a_broken_manifest():
    """The validator is live (offline schemas found, strict mode on), not a no-op."""
    import kubernetes_validate

    worker = regsearch_workloads(BASE_RESOURCES)["worker"]
    broken = {**worker, "spec": {**worker["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_topology_has_migration_job_api_dashboard_and_gpu_workers(name):
    resources = RENDERED[name]
    found = regsearch_workloads(resources)
    assert set(found) == set(REGSEARCH_COMPONENTS), sorted(found)
    assert found["migrate"]["kind"] == "Job" and pod_spec(found["migrate"])["restartPolicy"] == "OnFailure"
    for name_ in ("api", "dashboard", "worker"):
        assert found[name_]["kind"] == "Deployment", name_
    services = by_kind(resources, "Service")
    assert {"regsearch-api", "regsearch-dashboard"} <= set(services)
    secrets = by_kind(resources, "Secret")  # generated names carry a content hash suffix
    assert any(name_.startswith("regsearch-database") for name_ in secrets) and any(name_.startswith("regsearch-admin-token") for name_ in secrets)
    if DATABASE_SERVICE in by_kind(resources, "StatefulSet"):
        postgres = by_kind(resources, "StatefulSet")[DATABASE_SERVICE]
        assert postgres["spec"]["volumeClaimTemplates"], "the in-cluster database lives on a volume claim"
        assert DATABASE_SERVICE in services, "the database URL's host is the postgres Service"


@pytest.mark.parametrize("name", REGSEARCH_COMPONENTS)
def test_each_container_runs_its_compose_service_command_and_entrypoint(name):
    """Same image, entrypoint and command as docker-compose.yml's service of the same name."""
    container = STACK.container(name)
    service = SERVICES[name]
    assert container["command"] == as_list(service["entrypoint"]), f"{name}: entrypoint differs from compose"
    assert container["args"] == as_list(service["command"]), f"{name}: command differs from compose"
    assert container["image"] == service["image"], f"{name}: image differs from compose ({container['image']} vs {service['image']})"
    assert compose_service_for_image(container["image"])["build"] == service["build"]
    args = container["args"]
    assert args[0] == "regsearch" and args[1] in COMMANDS
    try:
        build_parser(args[1]).parse_args(args[1:])
    except SystemExit as error:
        pytest.fail(f"{name}: `{' '.join(args)}` is rejected by regsearch (exit {error.code})")
    assert STACK.argv(name)[0].endswith("docker/entrypoint.sh")
    assert (pod_spec(STACK.workload(name)).get("shareProcessNamespace") is True) == (service.get("init") is True), f"{name}: compose init vs pod init"


@pytest.mark.parametrize("name", REGSEARCH_COMPONENTS)
def test_each_environment_is_the_compose_environment_of_real_settings(name):
    env = STACK.declared_environment(name)
    compose_env = {key: str(value) for key, value in SERVICES[name]["environment"].items()}
    assert env == compose_env, f"{name}: environment differs from docker-compose.yml's"
    known = {f"REGSEARCH_{field.upper()}" for field in Settings.model_fields}
    unknown = sorted(key for key in env if key.startswith("REGSEARCH_") and key not in known)
    assert not unknown, f"{name}: no setting reads {unknown}"
    Settings(**{key[len("REGSEARCH_"):].lower(): value for key, value in env.items() if key in known})


def test_overlays_keep_the_commands_and_swap_only_registry_tag_and_credentials():
    base = regsearch_workloads(BASE_RESOURCES)
    for overlay, resources in RENDERED.items():
        for name, workload in regsearch_workloads(resources).items():
            (container,) = pod_spec(workload)["containers"]
            (original,) = pod_spec(base[name])["containers"]
            assert container["command"] == original["command"] and container["args"] == original["args"], (overlay, name)
            if overlay == "overlays/jax-workers" and name == "worker":  # the same worker, built for JAX by compose's worker-jax
                assert compose_service_for_image(container["image"]) == SERVICES["worker-jax"], container["image"]
                continue
            assert image_repository(container["image"]) == image_repository(original["image"]), (overlay, name)


def test_jax_overlay_puts_four_workers_on_a_card_each_within_its_share_of_memory():
    stack = KubeStack(RENDERED["overlays/jax-workers"], "postgresql+psycopg://postgres@127.0.0.1:5432/unused", BASE.parent / "never-created")
    fraction = float(stack.declared_environment("worker")["REGSEARCH_GPU_MEMORY_FRACTION"])
    replicas = stack.workload("worker")["spec"]["replicas"]
    assert replicas == 4 and fraction * replicas <= 0.9, (replicas, fraction)
    assert stack.container("worker")["resources"]["limits"]["nvidia.com/gpu"] == 1  # shared by the device plugin's time-slicing/MPS
    Settings(gpu_memory_fraction=fraction)


@pytest.mark.parametrize("overlay", sorted(RENDERED))
def test_pods_run_non_root_read_only_without_capabilities_and_with_limits(overlay):
    for workload in workloads(RENDERED[overlay]):
        spec = pod_spec(workload)
        label = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0, label
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", label
        assert spec.get("automountServiceAccountToken") is False, label
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True, label
            assert security["capabilities"]["drop"] == ["ALL"], label
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]) <= set(container["resources"]["limits"]), label
            assert container.get("image") and (":" in container["image"]), f"{label}: images are tagged"


@pytest.mark.parametrize("name", ["api", "dashboard"])
def test_probes_use_the_open_healthz_as_compose_does(name):
    """The kubelet sends no token: its probes must hit /healthz, the one path open with auth on."""
    container = STACK.container(name)
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz", f"{name} {probe}"
    assert "/healthz" in " ".join(as_list(SERVICES[name]["healthcheck"]["test"]))


def test_api_carries_scrape_annotations():
    api = STACK.workload("api")
    container = STACK.container("api")
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    port = int(annotations["prometheus.io/port"])
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert port in [entry["containerPort"] for entry in container["ports"]]
    args = container["args"]
    assert int(args[args.index("--port") + 1]) == port and args[args.index("--host") + 1] == "0.0.0.0"
    service = by_kind(BASE_RESOURCES, "Service")["regsearch-api"]
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()


def test_workers_take_one_gpu_each_grow_gpu_memory_and_outlast_an_epoch_on_sigterm():
    worker = STACK.workload("worker")
    container = STACK.container("worker")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert STACK.declared_environment("worker")["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    grace = pod_spec(worker)["terminationGracePeriodSeconds"]
    compose_grace = grace_seconds(SERVICES["worker"]["stop_grace_period"])
    assert grace >= compose_grace, f"workers get {grace}s to re-queue on SIGTERM, compose gives {compose_grace}s"
    assert "ports" not in container, "workers listen on nothing"
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0, "an upgrade never asks for more GPUs than the fleet has"


def test_network_policy_admits_exactly_the_database_clients_to_postgres():
    policy = by_kind(BASE_RESOURCES, "NetworkPolicy")["postgres-clients-only"]
    postgres = by_kind(BASE_RESOURCES, "StatefulSet")[DATABASE_SERVICE]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= postgres["spec"]["template"]["metadata"]["labels"].items()
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    selector = peer["podSelector"]["matchLabels"]
    admitted = {component(workload) for workload in workloads(BASE_RESOURCES) if selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()}
    assert admitted == set(REGSEARCH_COMPONENTS), admitted
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]


def test_settings_and_database_match_the_compose_defaults():
    postgres = by_kind(BASE_RESOURCES, "StatefulSet")[DATABASE_SERVICE]
    (container,) = pod_spec(postgres)["containers"]
    assert container["image"] == SERVICES[DATABASE_SERVICE]["image"]
    assert container["args"] == as_list(SERVICES[DATABASE_SERVICE]["command"])
    database = STACK.declared_environment("api")["REGSEARCH_DATABASE_URL"]
    assert database == SERVICES["api"]["environment"]["REGSEARCH_DATABASE_URL"]


def test_upgrade_step_one_applies_the_migration_job_with_what_it_needs_and_no_server():
    """docs/kubernetes.md upgrades with `-l 'app.kubernetes.io/component notin (api,dashboard,worker)'` first."""
    resources = RENDERED["overlays/example"]
    first = [resource for resource in resources
             if resource["metadata"].get("labels", {}).get("app.kubernetes.io/component") not in ("api", "dashboard", "worker")]
    kinds = {(resource["kind"], resource["metadata"]["name"]) for resource in first}
    job = next(resource for resource in first if resource["kind"] == "Job")
    (container,) = pod_spec(job)["containers"]
    needed = {("ConfigMap", source["configMapRef"]["name"]) for source in container["envFrom"]}
    needed |= {("Secret", variable["valueFrom"]["secretKeyRef"]["name"]) for variable in container["env"] if "valueFrom" in variable}
    assert needed <= kinds, f"step one misses {needed - kinds}"
    assert not {kind for kind, _ in kinds} & {"Deployment"}, kinds


@pytest.mark.parametrize("overlay", sorted(RENDERED))
def test_each_container_logs_in_as_its_role_and_only_migrate_and_api_get_the_admin_token(overlay):
    """Per-role database URLs (service/migrations/roles.py): the Secret's passwords agree with its URLs."""
    resources = RENDERED[overlay]
    stack = KubeStack(resources, "postgresql+psycopg://postgres@127.0.0.1:5432/unused", BASE.parent / "never-created")
    secret_keys = {}
    for name, role in SERVICE_ROLES.items():
        env = stack.declared_environment(name)
        url = make_url(env["REGSEARCH_DATABASE_URL"])
        assert (url.username in ROLES) == (role is not None) and (role is None or url.username == role), f"{overlay}: {name} logs in as {url.username}"
        assert env["REGSEARCH_MIGRATE_ON_START"] == "false", f"{overlay}: {name} must not migrate (the Job does)"
        assert ("REGSEARCH_ADMIN_TOKEN" in env) == (name in ("migrate", "api")), f"{overlay}: {name} and the admin token"
        Settings(admin_token=env.get("REGSEARCH_ADMIN_TOKEN"))  # long enough to be accepted
        (variable,) = [item for item in stack.container(name)["env"] if item["name"] == "REGSEARCH_DATABASE_URL"]
        secret_keys[name] = variable["valueFrom"]["secretKeyRef"]["key"]
        if role is not None:
            secret = next(value for key, value in by_kind(resources, "Secret").items() if key.startswith("regsearch-database"))
            data = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
            if ROLE_PASSWORDS[role] in data:  # the in-cluster database's init script sets this password
                assert url.password == data[ROLE_PASSWORDS[role]], f"{overlay}: {name}'s URL and {ROLE_PASSWORDS[role]} differ"
    assert secret_keys["migrate"] != secret_keys["api"] != secret_keys["worker"] != secret_keys["migrate"]


def test_postgres_runs_the_role_init_script_with_the_role_passwords():
    postgres = STACK.workload("database")
    (container,) = pod_spec(postgres)["containers"]
    (mount,) = [mount for mount in container["volumeMounts"] if mount["mountPath"] == INITDB_DIR]
    (volume,) = [volume for volume in pod_spec(postgres)["volumes"] if volume["name"] == mount["name"]]
    script = "\n".join(by_kind(BASE_RESOURCES, "ConfigMap")[volume["configMap"]["name"]]["data"].values())
    env = STACK.declared_environment("database")
    for role, variable in ROLE_PASSWORDS.items():
        assert f"ALTER ROLE {role} LOGIN PASSWORD" in script and variable in env, role
    # The same file compose mounts (docker-compose.yml's postgres volumes).
    (compose_mount,) = [entry for entry in SERVICES[DATABASE_SERVICE]["volumes"] if entry.split(":")[1] == INITDB_DIR]
    compose_dir = ROOT / compose_mount.split(":")[0]
    assert script == "\n".join(path.read_text() for path in sorted(compose_dir.glob("*.sh")))


@pytest.mark.parametrize("overlay", sorted(RENDERED))
def test_api_and_workers_share_one_artifact_store(overlay):
    """REGSEARCH_ARTIFACT_URL (the settings ConfigMap, as compose's) is the same in every container. A path: the API
    and worker pods mount one ReadWriteMany claim there, where compose mounts its artifacts volume. An s3:// URL
    (overlays/s3-artifacts): both get the same credentials Secret and the claim is gone."""
    resources = RENDERED[overlay]
    stack = KubeStack(resources, "postgresql+psycopg://postgres@127.0.0.1:5432/unused", BASE.parent / "never-created")
    urls = {name: stack.declared_environment(name)["REGSEARCH_ARTIFACT_URL"] for name in REGSEARCH_COMPONENTS}
    assert len(set(urls.values())) == 1, f"{overlay}: the containers disagree on the artifact store: {urls}"
    path = local_directory_setting(urls["api"])
    if path is None:
        assert urls["api"].startswith("s3://") and not by_kind(resources, "PersistentVolumeClaim"), (overlay, urls["api"])
        secrets = {name: {source["secretRef"]["name"] for source in stack.container(name)["envFrom"] if "secretRef" in source} for name in ("api", "worker")}
        assert secrets["api"] == secrets["worker"] and len(secrets["api"]) == 1, f"{overlay}: api and worker need the same S3 credentials: {secrets}"
        for name in ("api", "worker"):
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(stack.declared_environment(name)), f"{overlay}: {name} has no S3 credentials"
        return
    claims = {}
    for name in ("api", "worker"):
        volumes = {volume["name"]: volume for volume in pod_spec(stack.workload(name))["volumes"]}
        mounts = [mount for mount in stack.container(name)["volumeMounts"] if mount["mountPath"] == path]
        assert len(mounts) == 1 and not mounts[0].get("readOnly"), f"{overlay}: {name} must mount {path} writable once"
        claims[name] = volumes[mounts[0]["name"]].get("persistentVolumeClaim", {}).get("claimName")
    assert claims["api"] == claims["worker"] is not None, f"{overlay}: api and worker must share one claim at {path}: {claims}"
    claim = by_kind(resources, "PersistentVolumeClaim")[claims["api"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], f"{overlay}: API and worker pods on several nodes need RWX"
    assert stack.container_path("api", path) == stack.container_path("worker", path) == stack.workdir / "claims" / claims["api"]
    for name in ("api", "worker"):
        assert path in volume_mounts(SERVICES[name]), f"compose's {name} mounts its artifacts volume elsewhere than {path}"
