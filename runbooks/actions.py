"""Remediation actions: plugins with one base class.

Every action validates its parameters when the policy is loaded (a bad policy
stops the start), describes what it would do (dry run), and runs with a time
bound. Kubernetes actions use the official ``kubernetes`` client (in-cluster
config, or the kubeconfig); ``command`` runs an allow-listed argv from the
policy file (never from a request; no shell); ``http`` POSTs to a configured URL.

Results: ``executed`` (done), ``blocked`` (refused by the platform, e.g. a
PodDisruptionBudget; never forced), ``failed``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from aiops.core.redact import redact, redact_url, redact_value

#: label values that may be substituted into an argv or a Kubernetes name
_SAFE = re.compile(r"^[A-Za-z0-9_.:-]{1,253}$")


class ActionError(ValueError):
    """Bad parameters (at policy load) or a target the action cannot act on."""


@dataclass
class Target:
    namespace: str | None
    app: str | None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace or '-'}/{self.app or '-'}"

    def fill(self, text: str) -> str:
        """``{namespace}``, ``{app}`` and ``{label:NAME}`` replaced; values must be safe."""

        def value(name: str) -> str:
            if name.startswith("label:"):
                v = self.labels.get(name[6:], "")
            else:
                v = getattr(self, name, None) or ""
            if not _SAFE.match(v):
                raise ActionError(f"{{{name}}} is empty or holds unsafe characters: {v!r}")
            return v

        return re.sub(r"\{([a-z_]+(?::[A-Za-z0-9_]+)?)\}", lambda m: value(m.group(1)), text)


@dataclass
class ActionResult:
    """What an action did; its detail and data are audited, so they are redacted here
    (a URL's password or token in an error, an output, an answer never reaches the audit)."""

    result: str  # executed | blocked | failed | dry_run
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.detail = redact(self.detail)
        self.data = redact_value(self.data)


class Action:
    """Base class: ``validate`` at load, ``describe`` for dry runs, ``run`` to act.

    ``describe`` is what the audit shows (``would`` of ``policy_match``, ``dry_run``,
    ``executed``): it never holds a secret of the parameters (``redact``)."""

    name: ClassVar[str]
    kubernetes: ClassVar[bool] = False
    #: the risk of a rule that names none (``high`` waits for a human's approval)
    default_risk: ClassVar[str] = "low"

    @classmethod
    def validate(cls, params: dict[str, Any]) -> dict[str, Any]:
        return dict(params)

    @classmethod
    def inline_params(cls, arg: str) -> dict[str, Any]:
        raise ActionError(f"takes no inline argument (got {arg!r})")

    def __init__(self, params: dict[str, Any], *, timeout: float, clients: Any = None) -> None:
        self.params = params
        self.timeout = timeout
        self.clients = clients

    def describe(self, target: Target) -> str:
        return f"{self.name} {target.key}"

    def run(self, target: Target) -> ActionResult:
        raise NotImplementedError


class CommandAction(Action):
    """``params: {argv: [systemctl, restart, "{app}"], ok_codes: [0]}``."""

    name = "command"

    @classmethod
    def validate(cls, params: dict[str, Any]) -> dict[str, Any]:
        argv = params.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ActionError("params.argv must be a non-empty list of strings")
        ok = params.get("ok_codes", [0])
        if not isinstance(ok, list) or not all(isinstance(c, int) for c in ok):
            raise ActionError("params.ok_codes must be a list of integers")
        return {"argv": list(argv), "ok_codes": list(ok)}

    def argv(self, target: Target) -> list[str]:
        return [target.fill(a) for a in self.params["argv"]]

    def describe(self, target: Target) -> str:
        return redact("command " + " ".join(self.argv(target)))

    def run(self, target: Target) -> ActionResult:
        """Run the argv; output goes to temporary files, not pipes, so a command that
        starts a daemon (which inherits its output) still ends when the command does."""
        argv = self.argv(target)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
                )
            except OSError as exc:
                return ActionResult("failed", f"cannot run {argv[0]}: {exc.strerror}")
            try:
                code = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return ActionResult(
                    "failed", f"timed out after {self.timeout:g}s (killed)", _read(out, err)
                )
            data = {"exit_code": code, **_read(out, err)}
        if code in self.params["ok_codes"]:
            return ActionResult("executed", f"exit code {code}", data)
        return ActionResult("failed", f"exit code {code}", data)


def _read(out: Any, err: Any) -> dict[str, str]:
    def tail(f: Any) -> str:
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - 2000, 0))
        return f.read().decode(errors="replace")

    return {"stdout": tail(out), "stderr": tail(err)}


class HttpAction(Action):
    """``params: {url: https://..., headers: {...}}``: POSTs the target as JSON."""

    name = "http"

    @classmethod
    def validate(cls, params: dict[str, Any]) -> dict[str, Any]:
        url = params.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ActionError("params.url must be an http(s) URL")
        try:
            host = urlsplit(url).hostname
        except ValueError:  # e.g. a port that is not a number
            host = None
        if not host:
            raise ActionError(f"params.url must name a host: {redact_url(url)!r}")
        headers = params.get("headers", {})
        if not isinstance(headers, dict):
            raise ActionError("params.headers must be a mapping")
        return {"url": url, "headers": {str(k): str(v) for k, v in headers.items()}}

    def describe(self, target: Target) -> str:
        # the URL may carry credentials (user:password@, ?token=): the audit never does
        return f"POST {redact_url(self.params['url'])} for {target.key}"

    def run(self, target: Target) -> ActionResult:
        body = {"namespace": target.namespace, "app": target.app, "labels": target.labels}
        try:
            r = httpx.post(
                self.params["url"], json=body, headers=self.params["headers"], timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            return ActionResult("failed", f"{type(exc).__name__}: {exc}")
        data = {"status": r.status_code, "body": r.text[-2000:]}
        if r.is_success:
            return ActionResult("executed", f"HTTP {r.status_code}", data)
        return ActionResult("failed", f"HTTP {r.status_code}", data)


# -- Kubernetes -------------------------------------------------------------------------


class KubeClients:
    """The API clients, built once from in-cluster config or the kubeconfig."""

    def __init__(self, api_client: Any = None) -> None:
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)


class KubeAction(Action):
    kubernetes = True

    def _kube(self) -> KubeClients:
        if self.clients is None:
            self.clients = KubeClients()
        return self.clients

    def deployment(self, target: Target) -> str:
        return target.fill(self.params.get("deployment", "{app}"))

    def namespace(self, target: Target) -> str:
        return target.fill(self.params.get("namespace", "{namespace}"))

    @classmethod
    def validate(cls, params: dict[str, Any]) -> dict[str, Any]:
        for key in ("namespace", "deployment"):
            if key in params and (not isinstance(params[key], str) or not params[key]):
                raise ActionError(f"params.{key} must be a non-empty string")
        return dict(params)


class RestartPods(KubeAction):
    """Evicts the app's pods through the Eviction API, so PodDisruptionBudgets hold."""

    name = "restart_pods"

    @classmethod
    def validate(cls, params: dict[str, Any]) -> dict[str, Any]:
        params = super().validate(params)
        selector = params.get("selector", "app={app}")
        if not isinstance(selector, str) or not selector:
            raise ActionError("params.selector must be a label selector")
        return {**params, "selector": selector}

    def describe(self, target: Target) -> str:
        return f"evict pods {target.fill(self.params['selector'])} in {self.namespace(target)}"

    def run(self, target: Target) -> ActionResult:
        from kubernetes.client import V1Eviction, V1ObjectMeta
        from kubernetes.client.exceptions import ApiException

        kube = self._kube()
        ns = self.namespace(target)
        selector = target.fill(self.params["selector"])
        try:
            pods = kube.core.list_namespaced_pod(
                ns, label_selector=selector, _request_timeout=self.timeout
            )
        except ApiException as exc:
            return ActionResult(
                "failed", f"listing pods {selector}: HTTP {exc.status} {exc.reason}"
            )
        done: list[str] = []
        blocked: list[str] = []
        gone: list[str] = []
        for pod in pods.items:
            name = pod.metadata.name
            # apiVersion and kind are not filled in by the client: the body names itself
            body = V1Eviction(
                api_version="policy/v1",
                kind="Eviction",
                metadata=V1ObjectMeta(name=name, namespace=ns),
            )
            try:
                kube.core.create_namespaced_pod_eviction(
                    name, ns, body, _request_timeout=self.timeout
                )
                done.append(name)
            except ApiException as exc:
                if exc.status == 429:  # a PodDisruptionBudget said no: never force a delete
                    blocked.append(name)
                elif exc.status == 404:  # already gone: that is what we wanted
                    gone.append(name)
                else:
                    return ActionResult(
                        "failed",
                        f"eviction of {name}: HTTP {exc.status} {exc.reason}",
                        {"evicted": done, "blocked": blocked, "already_gone": gone},
                    )
        data = {"evicted": done, "blocked": blocked, "already_gone": gone}
        if not pods.items:
            return ActionResult("failed", f"no pod matches {selector} in {ns}", data)
        if blocked:  # a partial restart is not a done one: report what the PDB refused
            return ActionResult(
                "blocked",
                f"a PodDisruptionBudget blocks eviction of {len(blocked)} pod(s)"
                f" ({len(done)} evicted)",
                data,
            )
        return ActionResult("executed", f"evicted {len(done)} pod(s)", data)


class RolloutRestart(KubeAction):
    """``kubectl rollout restart``: patches the pod template's restartedAt annotation."""

    name = "rollout_restart"

    def describe(self, target: Target) -> str:
        return f"rollout restart deployment/{self.deployment(target)} in {self.namespace(target)}"

    def run(self, target: Target) -> ActionResult:
        from kubernetes.client.exceptions import ApiException

        kube = self._kube()
        ns, name = self.namespace(target), self.deployment(target)
        try:
            dep = kube.apps.read_namespaced_deployment(name, ns, _request_timeout=self.timeout)
            if dep.spec.paused:
                return ActionResult("blocked", f"deployment {name} is paused; not restarting")
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            patch = {
                "spec": {
                    "template": {
                        "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}
                    }
                }
            }
            # a dict is an object patch: say so, rather than rely on the client's default
            kube.apps.patch_namespaced_deployment(
                name,
                ns,
                patch,
                _content_type="application/strategic-merge-patch+json",
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            return ActionResult("failed", f"deployment {name}: HTTP {exc.status} {exc.reason}")
        return ActionResult("executed", f"restarted deployment {name}", {"restartedAt": stamp})


#: the annotations ``kubectl rollout undo`` keeps from the Deployment, not the ReplicaSet
_UNDO_KEEP = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        "deployment.kubernetes.io/revision",
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
    }
)
_HASH_LABEL = "pod-template-hash"


class RolloutUndo(KubeAction):
    """``kubectl rollout undo``: the Deployment's pod template back to its previous
    ReplicaSet's, as kubectl does it (the ReplicaSets the Deployment controls, the
    second-newest revision, one JSON patch replacing ``/spec/template`` and
    ``/metadata/annotations``). For a bad deploy; ``risk: high`` unless the policy
    says otherwise, so a human approves it."""

    name = "rollout_undo"
    default_risk = "high"

    def describe(self, target: Target) -> str:
        return (
            f"rollout undo deployment/{self.deployment(target)} in {self.namespace(target)}"
            " (to its previous revision)"
        )

    def run(self, target: Target) -> ActionResult:
        from kubernetes.client.exceptions import ApiException

        kube = self._kube()
        ns, name = self.namespace(target), self.deployment(target)
        serialize = kube.apps.api_client.sanitize_for_serialization
        try:
            dep = kube.apps.read_namespaced_deployment(name, ns, _request_timeout=self.timeout)
            selector = ",".join(
                f"{k}={v}" for k, v in sorted((dep.spec.selector.match_labels or {}).items())
            )
            sets = kube.apps.list_namespaced_replica_set(
                ns, label_selector=selector, _request_timeout=self.timeout
            ).items
            owned = [
                rs
                for rs in sets
                if any(
                    o.controller and o.uid == dep.metadata.uid
                    for o in rs.metadata.owner_references or []
                )
            ]
            revisions = sorted(
                ((_revision(rs), rs) for rs in owned if _revision(rs) is not None),
                key=lambda pair: pair[0],
            )
            if len(revisions) < 2:
                return ActionResult("blocked", f"deployment {name} has no earlier revision")
            revision, previous = revisions[-2]
            if dep.spec.paused:
                return ActionResult("blocked", f"deployment {name} is paused; not rolling back")
            template = serialize(previous.spec.template)
            current = serialize(dep.spec.template)
            if _without_hash(template) == _without_hash(current):
                return ActionResult(
                    "blocked", f"deployment {name} already runs revision {revision}'s template"
                )
            template = _without_hash(template)
            kept = dep.metadata.annotations or {}
            annotations = {k: v for k, v in kept.items() if k in _UNDO_KEEP}
            annotations.update(
                {
                    k: v
                    for k, v in (previous.metadata.annotations or {}).items()
                    if k not in _UNDO_KEEP
                }
            )
            patch = [
                {"op": "replace", "path": "/spec/template", "value": template},
                {"op": "replace", "path": "/metadata/annotations", "value": annotations},
            ]
            kube.apps.patch_namespaced_deployment(
                name,
                ns,
                patch,
                _content_type="application/json-patch+json",
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            return ActionResult("failed", f"deployment {name}: HTTP {exc.status} {exc.reason}")
        return ActionResult(
            "executed",
            f"rolled deployment {name} back to revision {revision}",
            {"revision": revision, "replicaset": previous.metadata.name},
        )


def _revision(rs: Any) -> int | None:
    value = (rs.metadata.annotations or {}).get("deployment.kubernetes.io/revision")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _without_hash(template: dict[str, Any]) -> dict[str, Any]:
    """The pod template without the ReplicaSet's ``pod-template-hash`` label."""
    out = dict(template)
    meta = dict(out.get("metadata") or {})
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != _HASH_LABEL}
    if labels or "labels" in meta:
        meta["labels"] = labels
    out["metadata"] = meta
    return out


class Scale(KubeAction):
    """Changes replicas through the scale subresource, within min/max, optimistic."""

    name = "scale"
    sign: ClassVar[int] = 1

    @classmethod
    def inline_params(cls, arg: str) -> dict[str, Any]:
        try:
            delta = abs(int(arg))
        except ValueError:
            raise ActionError(f"expects a number of replicas like +1, got {arg!r}") from None
        return {"delta": delta}

    @classmethod
    def validate(cls, params: dict[str, Any]) -> dict[str, Any]:
        try:
            delta = abs(int(params.get("delta", 1)))
            lo = int(params.get("min_replicas", 1))
            hi = int(params.get("max_replicas", 10))
        except (TypeError, ValueError):
            raise ActionError("delta, min_replicas and max_replicas must be integers") from None
        if delta < 1 or lo < 0 or hi < lo:
            raise ActionError("need delta >= 1 and 0 <= min_replicas <= max_replicas")
        params = super().validate(params)
        return {**params, "delta": delta, "min_replicas": lo, "max_replicas": hi}

    def describe(self, target: Target) -> str:
        d = self.sign * self.params["delta"]
        return f"scale deployment/{self.deployment(target)} by {d:+d} in {self.namespace(target)}"

    def run(self, target: Target) -> ActionResult:
        from kubernetes.client.exceptions import ApiException

        kube = self._kube()
        ns, name = self.namespace(target), self.deployment(target)
        try:
            scale = kube.apps.read_namespaced_deployment_scale(
                name, ns, _request_timeout=self.timeout
            )
            current = int(scale.spec.replicas or 0)
            lo, hi = self.params["min_replicas"], self.params["max_replicas"]
            # only ever move in the action's direction: scale_up above max_replicas (or
            # scale_down below min_replicas) is at the bound, never a move the other way
            if self.sign > 0:
                wanted = max(current, min(current + self.params["delta"], hi))
            else:
                wanted = min(current, max(current - self.params["delta"], lo))
            if wanted == current:
                return ActionResult(
                    "blocked", f"already at the bound ({current} replicas)", {"replicas": current}
                )
            body = {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "resourceVersion": scale.metadata.resource_version,
                },
                "spec": {"replicas": wanted},
            }
            kube.apps.replace_namespaced_deployment_scale(
                name, ns, body, _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status == 409:
                return ActionResult("failed", "replicas changed meanwhile (conflict); not retried")
            return ActionResult("failed", f"deployment {name}: HTTP {exc.status} {exc.reason}")
        return ActionResult(
            "executed",
            f"scaled {name} from {current} to {wanted}",
            {"from": current, "to": wanted},
        )


class ScaleUp(Scale):
    name = "scale_up"
    sign = 1


class ScaleDown(Scale):
    name = "scale_down"
    sign = -1


ACTIONS: dict[str, type[Action]] = {
    cls.name: cls
    for cls in (
        CommandAction,
        HttpAction,
        RestartPods,
        RolloutRestart,
        RolloutUndo,
        ScaleUp,
        ScaleDown,
    )
}


def make_action(
    name: str, params: dict[str, Any], *, timeout: float, clients: Any = None
) -> Action:
    return ACTIONS[name](params, timeout=timeout, clients=clients)


def now() -> float:
    return time.time()
