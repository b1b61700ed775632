"""The deployment files: Kubernetes manifests, docker-compose.yml and the Dockerfile.

Every YAML document is parsed; the checks tie the files to the code they deploy: the
env var names are settings of ``aiops.core.settings.Settings``, the commands are real
``aiops`` subcommands with real options, the probes hit routes the apps serve, the
webhook's Role grants exactly what ``runbooks/actions.py`` calls, and the catalogue and
policy in the ConfigMap load the way the services load them.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer.main
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine

from aiops.cli import app as aiops_app
from aiops.core.settings import Settings, load_settings
from detector.catalogue import resolve_catalogue
from runbooks.actions import ACTIONS
from runbooks.policy import load_policy, parse_file, parse_inline

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli below 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_DIR = ROOT / "deploy" / "compose"
DOCKERFILE = ROOT / "Dockerfile"

WEBHOOK_SA = ("aiops", "aiops-webhook")
DETECTOR_PORT, WEBHOOK_PORT = 9109, 8080

#: (apiGroup, resource, verb) the webhook's Role must grant, no more, no less
EXPECTED_GRANTS = {
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods/eviction", "create"),
    ("apps", "deployments", "get"),
    ("apps", "deployments", "patch"),
    ("apps", "deployments/scale", "get"),
    ("apps", "deployments/scale", "update"),
    ("apps", "deployments/scale", "patch"),
    ("apps", "replicasets", "list"),
}

#: the permission each Kubernetes client method needs (a method missing here fails)
CLIENT_METHOD_GRANTS = {
    "list_namespaced_pod": ("", "pods", "list"),
    "create_namespaced_pod_eviction": ("", "pods/eviction", "create"),
    "read_namespaced_deployment": ("apps", "deployments", "get"),
    "patch_namespaced_deployment": ("apps", "deployments", "patch"),
    "read_namespaced_deployment_scale": ("apps", "deployments/scale", "get"),
    "replace_namespaced_deployment_scale": ("apps", "deployments/scale", "update"),
    "list_namespaced_replica_set": ("apps", "replicasets", "list"),
}

KNOWN_SETTINGS = {
    str(info.validation_alias.choices[0])
    for info in Settings.model_fields.values()
    if info.validation_alias is not None
}


# -- loading ------------------------------------------------------------------------------


def _documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


KUBE_FILES = sorted(KUBE.glob("*.yaml"))
KUBE_DOCS: list[tuple[str, dict[str, Any]]] = [
    (path.name, doc) for path in KUBE_FILES for doc in _documents(path)
]
# what `kubectl apply -k` applies (the secret example is documentation)
APPLIED = [
    (f, d) for f, d in KUBE_DOCS if f != "secret.example.yaml" and d["kind"] != "Kustomization"
]
COMPOSE: dict[str, Any] = _documents(COMPOSE_FILE)[0]


def _find(kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    found = [
        d
        for _, d in KUBE_DOCS
        if d["kind"] == kind
        and d["metadata"]["name"] == name
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"expected one {kind} {namespace}/{name}, found {len(found)}"
    return found[0]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in APPLIED if d["kind"] == kind]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def _workloads() -> list[dict[str, Any]]:
    return [d for _, d in APPLIED if d["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob")]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def _main_container(name: str) -> dict[str, Any]:
    (container,) = _find("Deployment", name, "aiops")["spec"]["template"]["spec"]["containers"]
    return container


def _argv(container: dict[str, Any]) -> list[str]:
    """The container's argv; without `command` the image's ENTRYPOINT (aiops) runs."""
    command = container.get("command") or ["aiops"]
    return [*command, *container.get("args", [])]


def _secret_example() -> dict[str, str]:
    secret = _find("Secret", "aiops-secrets", "aiops")
    return {k: str(v) for k, v in secret["stringData"].items()}


def _aiops_services() -> dict[str, dict[str, Any]]:
    """Compose services that run this repository's image."""
    return {
        name: svc
        for name, svc in COMPOSE["services"].items()
        if "build" in svc or str(svc.get("image", "")).startswith("aiops")
    }


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting leaks in from the environment of the test run."""
    for name in KNOWN_SETTINGS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


# -- the aiops command line -----------------------------------------------------------------


def _parse_aiops(argv: list[str]) -> list[str]:
    """Parse an ``aiops ...`` argv with the real CLI (no invocation); the command path."""
    assert argv and argv[0] == "aiops", f"not an aiops command: {argv}"
    cmd: Any = typer.main.get_command(aiops_app)
    args, path = list(argv[1:]), []
    while hasattr(cmd, "commands"):  # a group (typer may vendor its own click)
        assert args, f"{argv}: a subcommand of {' '.join(['aiops', *path])} is missing"
        name = args.pop(0)
        sub = cmd.commands.get(name)
        assert sub is not None, f"{argv}: {name!r} is not an aiops subcommand"
        cmd, path = sub, [*path, name]
    # raises (click's) UsageError on an unknown option or a bad value
    cmd.make_context(" ".join(["aiops", *path]), args)
    return path


def test_parse_aiops_rejects_unknown_commands_and_options() -> None:
    assert _parse_aiops(["aiops", "demo", "workload", "--port", "9101"]) == ["demo", "workload"]
    with pytest.raises(AssertionError):
        _parse_aiops(["aiops", "retrain"])
    with pytest.raises(Exception, match="No such option"):
        _parse_aiops(["aiops", "detect", "--prot", "9109"])


# -- every document -----------------------------------------------------------------------


def test_every_manifest_parses_and_names_itself() -> None:
    assert {p.name for p in KUBE_FILES} >= {
        "namespace.yaml",
        "configmap.yaml",
        "secret.example.yaml",
        "detector.yaml",
        "webhook.yaml",
        "rbac.yaml",
        "retrain-cronjob.yaml",
        "kustomization.yaml",
    }
    assert len(KUBE_DOCS) >= 12
    for file, doc in KUBE_DOCS:
        assert isinstance(doc, dict), file
        for key in ("apiVersion", "kind"):
            assert isinstance(doc.get(key), str) and doc[key], f"{file}: no {key}"
        name = (doc.get("metadata") or {}).get("name")
        assert isinstance(name, str) and name, f"{file}: {doc['kind']} without metadata.name"
    assert isinstance(COMPOSE.get("services"), dict)


def test_namespaced_objects_live_in_a_named_namespace() -> None:
    namespaces = {d["metadata"]["name"] for d in _of_kind("Namespace")}
    assert "aiops" in namespaces
    for file, doc in APPLIED:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace"), f"{file}: {doc['kind']} has no namespace"


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    (kustomization,) = [d for _, d in KUBE_DOCS if d["kind"] == "Kustomization"]
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    expected = {p.name for p in KUBE_FILES} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(listed) == expected


def test_one_image_for_every_container() -> None:
    images = {c["image"] for w in _workloads() for c in _containers(_pod_spec(w))}
    assert images == {"ghcr.io/example/aiops:0.1.0"}


# -- RBAC -----------------------------------------------------------------------------------


def _webhook_bindings() -> list[dict[str, Any]]:
    return [
        b
        for b in _of_kind("RoleBinding") + _of_kind("ClusterRoleBinding")
        if any(
            s.get("kind") == "ServiceAccount" and (s.get("namespace"), s.get("name")) == WEBHOOK_SA
            for s in b.get("subjects", [])
        )
    ]


def _webhook_roles() -> list[dict[str, Any]]:
    roles = []
    for binding in _webhook_bindings():
        ref = binding["roleRef"]
        assert ref["kind"] == "Role", "the webhook gets namespaced Roles, never a ClusterRole"
        roles.append(_find("Role", ref["name"], binding["metadata"]["namespace"]))
    return roles


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_no_cluster_wide_rbac() -> None:
    assert not _of_kind("ClusterRole")
    assert not _of_kind("ClusterRoleBinding")


def test_webhook_role_is_least_privilege() -> None:
    roles = _webhook_roles()
    assert roles, "no Role is bound to the webhook's ServiceAccount"
    for role in roles:
        text = yaml.safe_dump(role)
        assert "secrets" not in text
        for rule in role["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, "no resourceNames/URLs"
            for key in ("apiGroups", "resources", "verbs"):
                assert rule[key], f"{key} is empty"
                assert not any("*" in item for item in rule[key]), f"wildcard in {key}"
        assert _grants(role) == EXPECTED_GRANTS


def test_expected_grants_cover_every_kubernetes_call_of_the_actions() -> None:
    source = (ROOT / "runbooks" / "actions.py").read_text()
    called = set(re.findall(r"kube\.(?:core|apps|policy)\.([a-z_]+)\(", source))
    assert called, "no Kubernetes client call found in runbooks/actions.py"
    unknown = called - set(CLIENT_METHOD_GRANTS)
    assert not unknown, f"add the permission of {sorted(unknown)} to the Role and this test"
    needed = {CLIENT_METHOD_GRANTS[m] for m in called}
    assert needed <= EXPECTED_GRANTS
    # what is granted beyond the calls: reading single pods and patching the scale
    assert EXPECTED_GRANTS - needed <= {("", "pods", "get"), ("apps", "deployments/scale", "patch")}


def test_role_binding_binds_the_role_to_the_webhook_service_account() -> None:
    bindings = _webhook_bindings()
    assert bindings
    for binding in bindings:
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        role = _find("Role", ref["name"], binding["metadata"]["namespace"])
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]
    namespace, name = WEBHOOK_SA
    _find("ServiceAccount", name, namespace)
    pod = _find("Deployment", "aiops-webhook", namespace)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name
    assert pod.get("automountServiceAccountToken", True) is True


def test_only_the_webhook_mounts_a_service_account_token() -> None:
    detector = _find("Deployment", "aiops-detector", "aiops")
    assert _pod_spec(detector)["automountServiceAccountToken"] is False
    for workload in _workloads():
        if workload["metadata"]["name"] != "aiops-webhook":
            assert _pod_spec(workload).get("automountServiceAccountToken") is False, workload[
                "metadata"
            ]["name"]


# -- pods -------------------------------------------------------------------------------------


def test_containers_run_as_non_root_without_privilege_escalation() -> None:
    workloads = _workloads()
    assert {w["kind"] for w in workloads} == {"Deployment", "CronJob"}
    for workload in workloads:
        pod = _pod_spec(workload)
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("runAsUser", 10001) != 0
        emptydirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for c in _containers(pod):
            where = f"{workload['metadata']['name']}/{c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 10001)) != 0, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            # a read-only root: the SQLite default and temporary files get emptyDirs
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            for path in ("/app/var", "/tmp"):
                assert mounts.get(path) in emptydirs, f"{where}: {path} is not an emptyDir"
            assert "resources" in c and c["resources"]["limits"]["memory"], where


def _route_paths(app: Any, method: str) -> set[str]:
    """The paths ``app`` serves ``method`` on, the routes of its routers included (as its
    OpenAPI lists them: FastAPI keeps an included router's routes out of ``app.routes``)."""
    paths = {r.path for r in app.routes if method in getattr(r, "methods", set())}
    if hasattr(app, "openapi"):
        paths |= {p for p, ops in app.openapi()["paths"].items() if method.lower() in ops}
    return paths


def test_probes_hit_real_endpoints_on_the_ports_the_apps_listen_on(clean_env: Any) -> None:
    from detector.service import create_app as detector_app
    from runbooks.app import create_app as webhook_app

    settings = load_settings()
    assert (settings.http_port, settings.webhook_port) == (DETECTOR_PORT, WEBHOOK_PORT)
    detector_routes = _route_paths(
        detector_app(SimpleNamespace(registry=CollectorRegistry()), schedule=False), "GET"
    )
    webhook_routes = _route_paths(
        webhook_app(
            settings,
            create_engine("sqlite://"),
            load_policy(None, None),
            registry=CollectorRegistry(),
        ),
        "GET",
    )
    cases = [
        ("aiops-detector", DETECTOR_PORT, "/healthz", "/livez", detector_routes),
        ("aiops-webhook", WEBHOOK_PORT, "/healthz", "/healthz", webhook_routes),
    ]
    for name, port, ready, live, routes in cases:
        c = _main_container(name)
        assert [p["containerPort"] for p in c["ports"]] == [port]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        port_var = "AIOPS_HTTP_PORT" if port == DETECTOR_PORT else "RUNBOOK_HTTP_PORT"
        assert env.get(port_var, str(port)) == str(port)
        for probe, path in (("readinessProbe", ready), ("livenessProbe", live)):
            get = c[probe]["httpGet"]
            assert (get["path"], get["port"]) == (path, port), f"{name} {probe}"
            assert path in routes, f"{name} serves no GET {path}"
        service = _find("Service", name, "aiops")
        (sp,) = service["spec"]["ports"]
        assert sp["port"] == port
        assert sp["targetPort"] in (port, c["ports"][0].get("name"))
        pod_labels = _find("Deployment", name, "aiops")["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()


def test_commands_are_real_aiops_subcommands() -> None:
    commands = {}
    for workload in _workloads():
        for c in _containers(_pod_spec(workload)):
            commands[f"{workload['metadata']['name']}/{c['name']}"] = _parse_aiops(_argv(c))
    assert commands["aiops-detector/detector"] == ["detect"]
    assert commands["aiops-webhook/webhook"] == ["webhook"]
    assert commands["aiops-retrain/train"] == ["train"]
    # every Deployment migrates before its service starts with AIOPS_AUTO_MIGRATE=false
    assert commands["aiops-detector/migrate"] == commands["aiops-webhook/migrate"] == ["migrate"]


def test_cronjob_retrains_nightly_without_overlap() -> None:
    cron = _find("CronJob", "aiops-retrain", "aiops")
    assert cron["spec"]["schedule"] == "0 3 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = _pod_spec(cron)
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (c,) = pod["containers"]
    assert _argv(c) == ["aiops", "train"]
    detector = _main_container("aiops-detector")
    assert c["image"] == detector["image"]
    assert c["envFrom"] == detector["envFrom"]
    # the detector's in-process schedule is off, so the models are not trained twice
    env = {e["name"]: e.get("value") for e in detector["env"]}
    assert env["AIOPS_RETRAIN_CRON"] == "off"


# -- configuration ----------------------------------------------------------------------------


def _env_names(container: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        assert set(source) <= {"configMapRef", "secretRef"}, source
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        ref = source.get("configMapRef") or source["secretRef"]
        assert "prefix" not in source
        names |= set(_find(kind, ref["name"], "aiops").get("data", {}))
    return names


def test_every_env_var_name_is_a_known_setting() -> None:
    assert {"AIOPS_DATABASE_URL", "RUNBOOK_WEBHOOK_SECRET", "PROM_URL"} <= KNOWN_SETTINGS
    assert "AIOPS_DATABASE_URLS" not in KNOWN_SETTINGS  # a typo is not a setting
    seen = set()
    for workload in _workloads():
        for c in _containers(_pod_spec(workload)):
            names = _env_names(c)
            unknown = names - KNOWN_SETTINGS
            assert not unknown, f"{workload['metadata']['name']}/{c['name']}: {sorted(unknown)}"
            seen |= names
    for name, svc in _aiops_services().items():
        unknown = set(svc.get("environment") or {}) - KNOWN_SETTINGS
        assert not unknown, f"compose service {name}: {sorted(unknown)}"
        seen |= set(svc.get("environment") or {})
    assert {"AIOPS_DATABASE_URL", "RUNBOOK_WEBHOOK_SECRET", "RUNBOOK_ALERTMANAGER_TOKEN"} <= seen


def test_secret_and_config_map_references_exist() -> None:
    secret = _secret_example()
    for workload in _workloads():
        for c in _containers(_pod_spec(workload)):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    key = ref["secretKeyRef"]
                    assert key["name"] == "aiops-secrets", e["name"]
                    assert key["key"] in secret, f"{e['name']}: key {key['key']} not in example"
                elif "configMapKeyRef" in ref:
                    key = ref["configMapKeyRef"]
                    assert key["key"] in _find("ConfigMap", key["name"], "aiops")["data"]
                else:
                    assert "value" in e, e["name"]
    assert {"database-url", "webhook-secret", "approval-secret", "alertmanager-token"} <= set(
        secret
    )
    assert all("CHANGE-ME" in v or v == "" for v in secret.values()), "placeholders only"


def _files_of(container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    """Paths in the container of the files of mounted ConfigMaps, with their contents."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        cm = volumes[mount["name"]].get("configMap")
        if cm is None:
            continue
        for key, text in _find("ConfigMap", cm["name"], "aiops")["data"].items():
            files[f"{mount['mountPath'].rstrip('/')}/{key}"] = text
    return files


def _resolved_env(container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= {
            k: str(v) for k, v in _find("ConfigMap", source["configMapRef"]["name"])["data"].items()
        }
    secret = _secret_example()
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            env[e["name"]] = secret[e["valueFrom"]["secretKeyRef"]["key"]]
    return env


def _load_with(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    with monkeypatch.context() as m:
        for name, value in env.items():
            m.setenv(name, value)
        return load_settings()


def test_each_container_environment_is_accepted_by_the_settings(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for workload in _workloads():
        pod = _pod_spec(workload)
        for c in _containers(pod):
            where = f"{workload['metadata']['name']}/{c['name']}"
            env = _resolved_env(c)
            files = _files_of(c, pod)
            # files the settings name are mounted into this container; read local copies
            for var in ("AIOPS_CONFIG", "RUNBOOK_POLICY_FILE"):
                if var in env:
                    assert env[var] in files, f"{where}: {var}={env[var]} is not mounted"
                    local = tmp_path / f"{where.replace('/', '-')}-{Path(env[var]).name}"
                    local.write_text(files[env[var]])
                    env[var] = str(local)
            settings = _load_with(clean_env, env)
            assert settings.database_url.startswith("postgresql://"), where
            if c["name"] == "webhook":
                policy = load_policy(settings.autofix_policy, settings.policy_file)
                assert len(policy) > 0
                assert settings.webhook_secret and settings.approval_secret
                assert settings.alertmanager_token
                assert settings.read_token and not settings.read_open  # reads closed
            if c["name"] == "detector":
                assert settings.webhook_url == "http://aiops-webhook.aiops.svc:8080/anomalies"
                assert settings.webhook_secret


def test_config_map_catalogue_and_policy_load(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    catalogues = policies = 0
    role_namespaces = {r["metadata"]["namespace"] for r in _webhook_roles()}
    for cm in _of_kind("ConfigMap"):
        for key, text in cm.get("data", {}).items():
            if not key.endswith((".yaml", ".yml")):
                continue
            path = tmp_path / key
            path.write_text(text)
            if key.startswith("policy"):
                scoped = parse_file(path)
                assert scoped and all(scoped.values())
                for scope, rules in scoped.items():
                    namespace = scope.split(".")[0]
                    if any(ACTIONS[r.action].kubernetes for r in rules):
                        # a Kubernetes fix needs the webhook's Role in that namespace
                        assert namespace in role_namespaces, f"{scope}: no Role in {namespace}"
                policies += 1
            else:
                # as the pods load it: AIOPS_CONFIG names the file (read_yaml_config)
                queries = resolve_catalogue(_load_with(clean_env, {"AIOPS_CONFIG": str(path)}))
                # the file's catalogue, not the default one
                assert [q.name for q in queries] == [
                    q["name"] for q in yaml.safe_load(text)["queries"]
                ]
                assert {"success_rate", "latency_p99"} <= {q.name for q in queries}
                catalogues += 1
    assert catalogues >= 1 and policies >= 1


# -- docker compose ----------------------------------------------------------------------------


def test_compose_has_the_whole_pipeline() -> None:
    services = COMPOSE["services"]
    assert set(services) >= {
        "prometheus",
        "alertmanager",
        "grafana",
        "postgres",
        "detector",
        "webhook",
        "migrate",
        "workload",
    }
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager")
    assert services["grafana"]["image"].startswith("grafana/grafana-oss")
    assert services["postgres"]["image"] == "postgres:16"
    aiops = _aiops_services()
    assert set(aiops) == {"migrate", "workload", "detector", "webhook"}
    assert len({svc["image"] for svc in aiops.values()}) == 1


def test_compose_commands_are_real_aiops_subcommands() -> None:
    commands = {
        name: _parse_aiops(["aiops", *svc["command"]]) for name, svc in _aiops_services().items()
    }
    assert commands == {
        "migrate": ["migrate"],
        "workload": ["demo", "workload"],
        "detector": ["detect"],
        "webhook": ["webhook"],
    }


def test_compose_services_wait_for_the_migration(clean_env: pytest.MonkeyPatch) -> None:
    services = COMPOSE["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("detector", "webhook"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
        settings = _load_with(
            clean_env, {k: str(v) for k, v in services[name]["environment"].items()}
        )
        assert settings.auto_migrate is False
        assert settings.database_url.startswith("postgresql://")
        assert "@postgres:5432/" in settings.database_url
        assert settings.prom_url == "http://prometheus:9090"
    webhook = _load_with(
        clean_env, {k: str(v) for k, v in services["webhook"]["environment"].items()}
    )
    assert parse_inline(webhook.autofix_policy)


def _bind_mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (host path, read-only) of the service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if parts[0].startswith(("./", "/")):
            out[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
    return out


def _scrape_targets(config: dict[str, Any]) -> dict[str, set[str]]:
    return {
        job["job_name"]: {t for sc in job["static_configs"] for t in sc["targets"]}
        for job in config["scrape_configs"]
    }


def test_compose_prometheus_scrapes_every_component_and_loads_the_rules() -> None:
    prometheus = COMPOSE["services"]["prometheus"]
    mounts = _bind_mounts(prometheus)
    assert mounts["/etc/prometheus/prometheus.yml"] == ("./deploy/compose/prometheus.yml", True)
    assert mounts["/etc/prometheus/rules"] == ("./dashboards/rules", True)
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = _documents(COMPOSE_DIR / "prometheus.yml")[0]
    targets = set().union(*_scrape_targets(config).values())
    workload_port = COMPOSE["services"]["workload"]["command"][-1]
    assert {f"detector:{DETECTOR_PORT}", f"webhook:{WEBHOOK_PORT}"} <= targets
    assert f"workload:{workload_port}" in targets
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]
    # the rule globs pick rule files only (never the promtool tests beside them)
    globs = config["rule_files"]
    assert globs and all(g.startswith("/etc/prometheus/rules/") for g in globs)
    local = ROOT / "dashboards" / "rules"
    jobs = set(_scrape_targets(config))
    for file in sorted(local.glob("*.y*ml")) if local.is_dir() else []:
        loaded = any(fnmatch.fnmatch(file.name, Path(g).name) for g in globs)
        doc = _documents(file)[0]
        assert loaded == ("groups" in doc and "tests" not in doc), file.name
        if loaded:  # jobs the rules name are jobs this Prometheus scrapes
            for job in re.findall(r'job="([^"]+)"', file.read_text()):
                assert job in jobs, f"{file.name} expects scrape job {job!r}"


def test_compose_alertmanager_posts_to_the_webhook_with_its_token() -> None:
    alertmanager = COMPOSE["services"]["alertmanager"]
    assert _bind_mounts(alertmanager)["/etc/alertmanager/alertmanager.yml"] == (
        "./deploy/compose/alertmanager.yml",
        True,
    )
    config = _documents(COMPOSE_DIR / "alertmanager.yml")[0]
    receivers = {r["name"]: r for r in config["receivers"]}
    (hook,) = receivers[config["route"]["receiver"]]["webhook_configs"]
    assert hook["url"] == f"http://webhook:{WEBHOOK_PORT}/alertmanager"
    auth = hook["http_config"]["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    token = COMPOSE["services"]["webhook"]["environment"]["RUNBOOK_ALERTMANAGER_TOKEN"]
    assert auth["credentials"] == token


def test_compose_grafana_mounts_the_dashboards_read_only() -> None:
    mounts = _bind_mounts(COMPOSE["services"]["grafana"])
    assert mounts["/etc/grafana/provisioning"] == ("./dashboards/provisioning", True)
    assert mounts["/var/lib/grafana/dashboards"] == ("./dashboards", True)


def test_compose_ports_and_health_checks_match_the_apps() -> None:
    services = COMPOSE["services"]
    assert f"{DETECTOR_PORT}:{DETECTOR_PORT}" in services["detector"]["ports"]
    assert f"{WEBHOOK_PORT}:{WEBHOOK_PORT}" in services["webhook"]["ports"]
    # the image's HEALTHCHECK probes the detector; the webhook has its own
    check = " ".join(services["webhook"]["healthcheck"]["test"])
    assert f"127.0.0.1:{WEBHOOK_PORT}/healthz" in check
    assert services["migrate"]["healthcheck"]["disable"] is True


# -- the image -----------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _stages() -> Iterator[list[tuple[str, str]]]:
    stage: list[tuple[str, str]] = []
    for ins in _instructions():
        if ins[0] == "FROM" and stage:
            yield stage
            stage = []
        if ins[0] == "FROM" or stage:
            stage.append(ins)
    yield stage


def test_dockerfile_builds_a_wheel_and_runs_it_as_non_root() -> None:
    stages = list(_stages())
    assert len(stages) == 2
    builder, runtime = stages
    assert re.fullmatch(r"python:3\.11-slim AS builder", builder[0][1], re.IGNORECASE)
    assert runtime[0][1].split()[0] == "python:3.11-slim"
    assert any(i == "RUN" and "pip wheel . -w /wheels" in a for i, a in builder)
    install = [a for i, a in runtime if i == "RUN" and "pip install" in a]
    assert len(install) == 1
    assert "--no-index" in install[0] and "/wheels" in install[0]
    assert "[dev]" not in install[0]
    runtime_text = " ".join(a for _, a in runtime)
    for tool in ("build-essential", "gcc", "apt-get install"):
        assert tool not in runtime_text, f"{tool} in the runtime stage"
    (user,) = [a for i, a in runtime if i == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert "/app/var" in runtime_text and "chown 10001" in runtime_text
    assert ("ENTRYPOINT", '["aiops"]') in runtime
    assert ("CMD", '["detect"]') in runtime
    expose = {p for i, a in runtime if i == "EXPOSE" for p in a.split()}
    assert expose == {str(DETECTOR_PORT), str(WEBHOOK_PORT)}
    (health,) = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert f"127.0.0.1:{DETECTOR_PORT}/livez" in health
    assert "AIOPS_DATABASE_URL=sqlite:////app/var/aiops.db" in runtime_text


def test_dockerfile_copies_the_packages_and_no_tests() -> None:
    copies = [a.split() for i, a in _instructions() if i in ("COPY", "ADD")]
    sources = {
        s.rstrip("/") for args in copies if not args[0].startswith("--from") for s in args[:-1]
    }
    assert not any(s.startswith(("tests", "bench", ".venv", "var")) or s == "." for s in sources)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= sources, f"packages not copied: {sorted(packages - sources)}"
    assert {"pyproject.toml", "README.md"} <= sources
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "var", ".git", "tests", ".pytest_cache"} <= ignored


def test_sql_migrations_are_package_data_of_the_wheel() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["sql"]
    migrations = sorted((ROOT / "sql" / "migrations").glob("*.sql"))
    assert migrations
    for path in migrations:
        relative = path.relative_to(ROOT / "sql").as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
