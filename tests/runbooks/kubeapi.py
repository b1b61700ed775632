"""A stand-in Kubernetes API server for the Kubernetes actions, driven by the real client.

``KubeAPI`` is a ``ThreadingHTTPServer`` on 127.0.0.1 that records every request
(method, path, query, headers, JSON body) and answers from a small in-memory model:

* pods of a namespace, listed with an equality ``labelSelector``;
* the Eviction subresource: 201 (the pod goes away), or 429 when a
  PodDisruptionBudget "blocks" that pod, or 404 when the pod is not there;
* Deployments: ``GET`` and ``PATCH`` (strategic-merge or merge patch of a JSON
  object; a JSON Patch must be a list, as on a real API server, and may replace
  ``/spec/template`` and ``/metadata/annotations``);
* ReplicaSets of a namespace, listed with an equality ``labelSelector``, each with
  its revision annotation and its owning Deployment's uid;
* the scale subresource: ``GET`` and ``PUT``, with the resourceVersion
  precondition (409 when the body's ``metadata.resourceVersion`` is stale).

The model holds what a real server would hold, so a test can check both the
requests the client sent and their effect. ``concurrent_write`` simulates another
writer changing the replicas right after the action read the scale, and
``vanish_after_list`` a pod deleted between the list and its eviction.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

from runbooks.actions import KubeClients

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MERGE_PATCHES = ("application/strategic-merge-patch+json", "application/merge-patch+json")

_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
_POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")
_EVICTION = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/eviction$")
_DEPLOYMENT = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)$")
_SCALE = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale$")
_REPLICASETS = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/replicasets$")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: Any  # the decoded JSON body, or None

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


@dataclass
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]


def pod_template(app: str, image: str, annotations: dict[str, str] | None = None) -> dict:
    return {
        "metadata": {"labels": {"app": app}, "annotations": dict(annotations or {})},
        "spec": {"containers": [{"name": app, "image": image}]},
    }


@dataclass
class Deployment:
    name: str
    namespace: str
    replicas: int = 1
    paused: bool = False
    resource_version: int = 1
    template_annotations: dict[str, str] = field(default_factory=dict)
    image: str = ""
    uid: str = ""
    annotations: dict[str, str] = field(default_factory=dict)

    def template(self) -> dict[str, Any]:
        image = self.image or f"{self.name}:1"
        return pod_template(self.name, image, self.template_annotations)

    def as_json(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "replicas": self.replicas,
            "selector": {"matchLabels": {"app": self.name}},
            "template": self.template(),
        }
        if self.paused:
            spec["paused"] = True
        meta: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "resourceVersion": str(self.resource_version),
            "uid": self.uid or f"uid-{self.name}",
        }
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": spec,
            "status": {"replicas": self.replicas},
        }

    def scale_json(self) -> dict[str, Any]:
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": str(self.resource_version),
            },
            "spec": {"replicas": self.replicas},
            "status": {"replicas": self.replicas, "selector": f"app={self.name}"},
        }


@dataclass
class ReplicaSet:
    """A revision of a Deployment (or of nobody: ``owner`` empty)."""

    name: str
    namespace: str
    revision: int
    template: dict[str, Any]
    owner: str = ""  # the owning Deployment's uid
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": dict(self.labels),
            "annotations": {
                **self.annotations,
                "deployment.kubernetes.io/revision": str(self.revision),
            },
        }
        if self.owner:
            meta["ownerReferences"] = [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": self.name.rsplit("-", 1)[0],
                    "uid": self.owner,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
        return {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": meta,
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": dict(self.labels)},
                "template": self.template,
            },
        }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


def _selector(text: str) -> list[tuple[str, str, str]]:
    """Equality-based label selector terms ``k=v``, ``k==v``, ``k!=v``; ValueError otherwise."""
    terms = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([A-Za-z0-9_./-]+)\s*(!=|==|=)\s*([A-Za-z0-9_.-]*)", part)
        if m is None:
            raise ValueError(part)
        terms.append((m.group(1), m.group(2), m.group(3)))
    return terms


def _selected(labels: dict[str, str], terms: list[tuple[str, str, str]]) -> bool:
    for key, op, value in terms:
        equal = labels.get(key) == value
        if equal != (op != "!="):
            return False
    return True


class KubeAPI:
    """The stand-in server; use as a context manager or ``start``/``stop``."""

    def __init__(self) -> None:
        self.pods: list[Pod] = []
        self.deployments: dict[tuple[str, str], Deployment] = {}
        self.replicasets: list[ReplicaSet] = []
        self.pdb_blocks: set[tuple[str, str]] = set()  # (namespace, pod) a PDB protects
        self.requests: list[Request] = []
        self._races: dict[tuple[str, str], int] = {}
        self._vanishing: set[tuple[str, str]] = set()
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- the model -------------------------------------------------------------------------
    def add_pod(self, namespace: str, name: str, **labels: str) -> None:
        with self.lock:
            self.pods.append(Pod(name, namespace, labels))

    def pod_names(self, namespace: str) -> list[str]:
        with self.lock:
            return sorted(p.name for p in self.pods if p.namespace == namespace)

    def add_deployment(self, namespace: str, name: str, **kw: Any) -> Deployment:
        dep = Deployment(name, namespace, **kw)
        with self.lock:
            self.deployments[(namespace, name)] = dep
        return dep

    def add_revision(
        self, dep: Deployment, revision: int, image: str, *, owned: bool = True, **annotations: str
    ) -> ReplicaSet:
        """A ReplicaSet of ``dep`` at ``revision`` running ``image`` (its template carries
        the ``pod-template-hash`` label, as a real one does)."""
        hashed = f"h{revision}{image.replace(':', '').replace('.', '')}"[:10]
        template = pod_template(dep.name, image, dep.template_annotations)
        template["metadata"]["labels"]["pod-template-hash"] = hashed
        rs = ReplicaSet(
            f"{dep.name}-{hashed}",
            dep.namespace,
            revision,
            template,
            owner=(dep.uid or f"uid-{dep.name}") if owned else "",
            labels={"app": dep.name, "pod-template-hash": hashed},
            annotations=annotations,
        )
        with self.lock:
            self.replicasets.append(rs)
        return rs

    def concurrent_write(self, namespace: str, name: str, replicas: int) -> None:
        """Right after the next scale GET of this deployment, another writer sets replicas."""
        with self.lock:
            self._races[(namespace, name)] = replicas

    def vanish_after_list(self, namespace: str, name: str) -> None:
        """The pod is listed once more, then goes away (deleted by someone else)."""
        with self.lock:
            self._vanishing.add((namespace, name))

    def mutating(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method in MUTATING]

    def calls(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(r.method, r.path) for r in self.requests]

    # -- the server ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> KubeAPI:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                req = Request(
                    self.command,
                    url.path,
                    parse_qs(url.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                with api.lock:
                    api.requests.append(req)
                    code, payload = api._answer(req)
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(5)
            self._server = None

    def __enter__(self) -> KubeAPI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- answers (called with the lock held) ----------------------------------------------
    def _answer(self, req: Request) -> tuple[int, dict[str, Any]]:
        ctype = (req.content_type or "application/json").split(";")[0].strip()
        if req.method in ("POST", "PUT") and ctype != "application/json":
            # the API server reads a body without Content-Type as JSON, as this does
            return 415, _status(415, "UnsupportedMediaType", f"the media type {ctype!r}")
        if m := _PODS.match(req.path):
            if req.method == "GET":
                return self._list_pods(m.group(1), req)
        elif m := _EVICTION.match(req.path):
            if req.method == "POST":
                return self._evict(m.group(1), m.group(2), req.body)
        elif m := _POD.match(req.path):
            if req.method == "DELETE":  # recorded: the actions must never send this
                return self._delete_pod(m.group(1), m.group(2))
        elif m := _REPLICASETS.match(req.path):
            if req.method == "GET":
                return self._list_replicasets(m.group(1), req)
        elif m := _SCALE.match(req.path):
            dep = self.deployments.get((m.group(1), m.group(2)))
            if dep is None:
                return 404, _status(404, "NotFound", f'deployments.apps "{m.group(2)}" not found')
            if req.method == "GET":
                return self._read_scale(dep)
            if req.method == "PUT":
                return self._replace_scale(dep, req.body)
        elif m := _DEPLOYMENT.match(req.path):
            dep = self.deployments.get((m.group(1), m.group(2)))
            if dep is None:
                return 404, _status(404, "NotFound", f'deployments.apps "{m.group(2)}" not found')
            if req.method == "GET":
                return 200, dep.as_json()
            if req.method == "PATCH":
                return self._patch(dep, req)
        else:
            return 404, _status(404, "NotFound", f"the server could not find {req.path}")
        return 405, _status(405, "MethodNotAllowed", f"{req.method} is not supported here")

    def _list_pods(self, ns: str, req: Request) -> tuple[int, dict[str, Any]]:
        try:
            terms = _selector(req.query.get("labelSelector", [""])[0])
        except ValueError as exc:
            return 400, _status(400, "BadRequest", f"unable to parse requirement: {exc}")
        items = [
            {
                "metadata": {"name": p.name, "namespace": p.namespace, "labels": dict(p.labels)},
                "spec": {"containers": [{"name": "main", "image": "main:1"}]},
                "status": {"phase": "Running"},
            }
            for p in self.pods
            if p.namespace == ns and _selected(p.labels, terms)
        ]
        self.pods = [p for p in self.pods if (p.namespace, p.name) not in self._vanishing]
        self._vanishing.clear()
        return 200, {
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": {"resourceVersion": "1"},
            "items": items,
        }

    def _list_replicasets(self, ns: str, req: Request) -> tuple[int, dict[str, Any]]:
        try:
            terms = _selector(req.query.get("labelSelector", [""])[0])
        except ValueError as exc:
            return 400, _status(400, "BadRequest", f"unable to parse requirement: {exc}")
        items = [
            rs.as_json()
            for rs in self.replicasets
            if rs.namespace == ns and _selected(rs.labels, terms)
        ]
        return 200, {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSetList",
            "metadata": {"resourceVersion": "1"},
            "items": items,
        }

    def _evict(self, ns: str, name: str, body: Any) -> tuple[int, dict[str, Any]]:
        meta = body.get("metadata") if isinstance(body, dict) else None
        if not isinstance(meta, dict) or meta.get("name") != name:
            return 400, _status(
                400, "BadRequest", "name in URL does not match name in Eviction object"
            )
        if meta.get("namespace") not in (None, ns):
            return 400, _status(400, "BadRequest", "the namespace of the object does not match")
        pod = next((p for p in self.pods if p.namespace == ns and p.name == name), None)
        if pod is None:
            return 404, _status(404, "NotFound", f'pods "{name}" not found')
        if (ns, name) in self.pdb_blocks:
            return 429, _status(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
            )
        self.pods.remove(pod)
        return 201, _status(201, "", "")

    def _delete_pod(self, ns: str, name: str) -> tuple[int, dict[str, Any]]:
        pod = next((p for p in self.pods if p.namespace == ns and p.name == name), None)
        if pod is None:
            return 404, _status(404, "NotFound", f'pods "{name}" not found')
        self.pods.remove(pod)
        return 200, _status(200, "", "")

    def _patch(self, dep: Deployment, req: Request) -> tuple[int, dict[str, Any]]:
        ctype = (req.content_type or "").split(";")[0].strip()
        if ctype == "application/json-patch+json" and not isinstance(req.body, list):
            return 400, _status(400, "BadRequest", "json: cannot unmarshal object into Patch")
        if ctype == "application/json-patch+json":
            return self._json_patch(dep, req.body)
        if ctype not in MERGE_PATCHES:
            return 415, _status(415, "UnsupportedMediaType", f"the media type {ctype!r}")
        if not isinstance(req.body, dict):
            return 400, _status(400, "BadRequest", "the patch must be a JSON object")
        spec = req.body.get("spec") or {}
        annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations")
        for key, value in (annotations or {}).items():
            if value is None:
                dep.template_annotations.pop(key, None)
            else:
                dep.template_annotations[key] = value
        if "replicas" in spec:
            dep.replicas = int(spec["replicas"])
        if "paused" in spec:
            dep.paused = bool(spec["paused"])
        dep.resource_version += 1
        return 200, dep.as_json()

    def _json_patch(self, dep: Deployment, ops: list[Any]) -> tuple[int, dict[str, Any]]:
        """RFC 6902 ``replace`` of ``/spec/template`` and ``/metadata/annotations`` (what
        ``kubectl rollout undo`` sends); anything else is refused as unsupported here."""
        for op in ops:
            if not isinstance(op, dict) or op.get("op") != "replace":
                return 422, _status(422, "Invalid", f"unsupported operation {op!r}")
            value = op.get("value")
            if op.get("path") == "/spec/template" and isinstance(value, dict):
                meta = value.get("metadata") or {}
                containers = (value.get("spec") or {}).get("containers") or [{}]
                if (meta.get("labels") or {}) != {"app": dep.name}:
                    return 422, _status(
                        422, "Invalid", "spec.template.metadata.labels: must match the selector"
                    )
                dep.image = containers[0].get("image", "")
                dep.template_annotations = dict(meta.get("annotations") or {})
            elif op.get("path") == "/metadata/annotations" and isinstance(value, dict):
                dep.annotations = dict(value)
            else:
                return 422, _status(422, "Invalid", f"unsupported path {op.get('path')!r}")
        dep.resource_version += 1
        return 200, dep.as_json()

    def _read_scale(self, dep: Deployment) -> tuple[int, dict[str, Any]]:
        answer = dep.scale_json()
        race = self._races.pop((dep.namespace, dep.name), None)
        if race is not None:  # another writer, right after this read
            dep.replicas = race
            dep.resource_version += 1
        return 200, answer

    def _replace_scale(self, dep: Deployment, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
            return 400, _status(400, "BadRequest", "a Scale object is required")
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, dep.name):
            return 400, _status(400, "BadRequest", "the name of the object does not match")
        rv = meta.get("resourceVersion")
        if rv is not None and rv != str(dep.resource_version):
            return 409, _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on deployments.apps "{dep.name}": the object '
                "has been modified; please apply your changes to the latest version and try again",
            )
        replicas = body["spec"].get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            return 422, _status(422, "Invalid", "spec.replicas must be a non-negative integer")
        dep.replicas = replicas
        dep.resource_version += 1
        return 200, dep.scale_json()


@contextmanager
def kube_clients(api: KubeAPI) -> Iterator[KubeClients]:
    """The real ``kubernetes`` client, as the actions use it, talking to ``api``."""
    cfg = client.Configuration()
    cfg.no_proxy = "127.0.0.1"
    cfg.host = api.url
    api_client = client.ApiClient(cfg)
    try:
        yield KubeClients(api_client)
    finally:
        api_client.close()
