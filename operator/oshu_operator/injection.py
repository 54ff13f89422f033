"""Pod injection, as pure functions on the pod dict: decide (or refuse), then apply.

`plan()` inspects a pod against its session and either raises `Refused` with a message
for the user or returns a `Plan` whose `apply()` mutates a pod body in place (kopf turns
that into a JSON patch). Applying a plan to an already-injected pod changes nothing, so
the webhook can be re-invoked safely.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from . import names as n
from .config import OperatorConfig, SidecarConfig

class Refused(Exception):
    """The pod must not be admitted; the message tells the user why and what to do."""


class NotReady(Exception):
    """The session exists but cannot be injected yet (tokens not minted)."""


@dataclass(frozen=True, slots=True)
class SessionView:
    """What admission needs from a VaultSession: tokens and names, no real values."""

    namespace: str
    name: str
    uid: str
    env_names: tuple[str, ...]
    tokens: Mapping[str, str]
    source_secrets: Mapping[str, str]  # real Secret name -> one env name it backs
    phase: str | None = None
    message: str | None = None
    deleting: bool = False

    @property
    def session_secret(self) -> str:
        return n.SESSION_SECRET_PREFIX + self.name

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "SessionView":
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        entries = [s for s in spec.get("secrets") or [] if isinstance(s, Mapping) and isinstance(s.get("name"), str)]
        sources: dict[str, str] = {}
        for s in entries:
            ref = s.get("secretKeyRef") or {}
            if isinstance(ref.get("name"), str):
                sources.setdefault(ref["name"], s["name"])
        cond = next((c for c in status.get("conditions") or [] if c.get("type") == n.CONDITION_READY), {})
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            env_names=tuple(s["name"] for s in entries),
            tokens=dict(status.get("tokens") or {}),
            source_secrets=sources,
            phase=status.get("phase"),
            message=cond.get("message"),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    def check_usable(self) -> None:
        ref = f"VaultSession {self.namespace}/{self.name}"
        if self.deleting:
            raise Refused(f"{ref} is being deleted; its keys are revoked")
        if self.phase == n.PHASE_EXPIRED:
            raise Refused(f"{ref} has expired; create a new session or extend its spec.ttl")
        if self.phase == n.PHASE_INVALID:
            raise Refused(f"{ref} is invalid: {self.message}")
        missing = [name for name in self.env_names if name not in self.tokens]
        if missing:
            raise NotReady(f"{ref} has no sealed token yet for {', '.join(missing)}; retry in a few seconds")


def session_name_of(pod: Mapping[str, Any]) -> str | None:
    """The session a pod opts into: its label, or the same-key annotation; both must agree."""
    meta = pod.get("metadata") or {}
    label = (meta.get("labels") or {}).get(n.LABEL_SESSION)
    annotation = (meta.get("annotations") or {}).get(n.ANNOTATION_SESSION)
    if label and annotation and label != annotation:
        raise Refused(f"label {n.LABEL_SESSION}={label!r} and annotation {n.ANNOTATION_SESSION}={annotation!r} "
                      "name different sessions; set one, or make them agree")
    return label or annotation or None


# --- what gets injected ----------------------------------------------------------------------

def _probe(port: int, period: int, failures: int) -> dict[str, Any]:
    # Every field the API server would default is set, so a stored sidecar compares equal.
    return {
        "httpGet": {"path": n.SIDECAR_READY_PATH, "port": port, "scheme": "HTTP"},
        "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 1, "successThreshold": 1,
    }


def sidecar_container(cfg: SidecarConfig) -> dict[str, Any]:
    return {
        "name": n.SIDECAR_CONTAINER,
        "image": cfg.image,
        "imagePullPolicy": cfg.pull_policy,
        "restartPolicy": "Always",  # native sidecar: starts before, outlives the app containers
        "args": [
            "--listen", f"127.0.0.1:{cfg.proxy_port}",
            "--admin-listen", f"0.0.0.0:{cfg.admin_port}",
            "--session-file", n.SESSION_FILE_PATH,
            "--ca-cert", n.SESSION_CA_CERT_PATH,
            "--ca-key", n.SESSION_CA_KEY_PATH,
            "--log-level", cfg.log_level,
        ],
        "ports": [{"name": n.SIDECAR_ADMIN_PORT_NAME, "containerPort": cfg.admin_port, "protocol": "TCP"}],
        "startupProbe": _probe(cfg.admin_port, period=1, failures=120),
        "readinessProbe": _probe(cfg.admin_port, period=5, failures=3),
        "resources": {
            "requests": {"cpu": cfg.cpu_request, "memory": cfg.memory_request},
            "limits": {"cpu": cfg.cpu_limit, "memory": cfg.memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": n.SIDECAR_UID,
            "runAsGroup": n.SIDECAR_UID,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": n.VOLUME_SESSION, "mountPath": n.SESSION_MOUNT_DIR, "readOnly": True},
            {"name": n.VOLUME_TMP, "mountPath": n.TMP_MOUNT_DIR},
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def volumes(session_secret: str) -> list[dict[str, Any]]:
    return [
        # Sidecar only: the session file (real values) and the CA key.
        {"name": n.VOLUME_SESSION, "secret": {"secretName": session_secret, "defaultMode": 0o444}},
        # App containers: the CA certificate and bundle, and nothing else from the Secret.
        {"name": n.VOLUME_CA, "secret": {
            "secretName": session_secret, "defaultMode": 0o444,
            "items": [{"key": n.KEY_CA_CERT, "path": n.KEY_CA_CERT}, {"key": n.KEY_CA_BUNDLE, "path": n.KEY_CA_BUNDLE}],
        }},
        {"name": n.VOLUME_TMP, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]


CA_MOUNT = {"name": n.VOLUME_CA, "mountPath": n.CA_MOUNT_DIR, "readOnly": True}


def infra_env(no_proxy: Iterable[str], proxy_url: str) -> list[tuple[str, str]]:
    """Proxy and CA variables for app containers, in injection order."""
    no_proxy_value = ",".join(dict.fromkeys(no_proxy))
    return [
        *((var, proxy_url) for var in n.ENV_PROXY_VARS),
        *((var, no_proxy_value) for var in n.ENV_NO_PROXY_VARS),
        (n.ENV_NODE_EXTRA_CA, n.CA_CERT_PATH),
        (n.ENV_NODE_USE_ENV_PROXY, "1"),
        *((var, n.CA_BUNDLE_PATH) for var in n.ENV_CA_BUNDLE_VARS),
    ]


# --- the plan --------------------------------------------------------------------------------

@dataclass(slots=True)
class Plan:
    session: SessionView
    sidecar: dict[str, Any]
    volumes: list[dict[str, Any]]
    env: dict[str, list[dict[str, str]]]  # container name -> env entries to append
    mounts: dict[str, bool]  # container name -> needs the CA mount
    warnings: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)

    def apply(self, pod: dict[str, Any]) -> None:
        spec = pod.setdefault("spec", {})
        inits = [c for c in spec.get("initContainers") or [] if c.get("name") != n.SIDECAR_CONTAINER]
        spec["initContainers"] = [self.sidecar, *inits]
        vols = spec.setdefault("volumes", [])
        for vol in self.volumes:
            idx = next((i for i, v in enumerate(vols) if v.get("name") == vol["name"]), None)
            if idx is None:
                vols.append(vol)
            elif vols[idx] != vol:
                vols[idx] = vol
        for container in _containers(spec):
            cname = container.get("name")
            if cname in self.env and self.env[cname]:
                container.setdefault("env", []).extend(self.env[cname])
            if self.mounts.get(cname):
                container.setdefault("volumeMounts", []).append(dict(CA_MOUNT))
        meta = pod.setdefault("metadata", {})
        annotations = meta.get("annotations") or {}
        meta["annotations"] = annotations
        annotations[n.ANNOTATION_INJECTED] = json.dumps(self.record, sort_keys=True, separators=(",", ":"))


def _containers(spec: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            if c.get("name") != n.SIDECAR_CONTAINER:
                yield c


def _env_value(entry: Mapping[str, Any]) -> str | None:
    return None if entry.get("valueFrom") is not None else entry.get("value", "")


def _secret_refs(spec: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(secret name, where) for every Secret a pod's volumes, env or envFrom reference."""
    for vol in spec.get("volumes") or []:
        if (vol.get("secret") or {}).get("secretName"):
            yield vol["secret"]["secretName"], f"volume {vol.get('name')}"
        for src in (vol.get("projected") or {}).get("sources") or []:
            if (src.get("secret") or {}).get("name"):
                yield src["secret"]["name"], f"volume {vol.get('name')}"
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            for e in c.get("env") or []:
                ref = ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
                if ref:
                    yield ref, f"container {c.get('name')} env {e.get('name')}"
            for ef in c.get("envFrom") or []:
                ref = (ef.get("secretRef") or {}).get("name")
                if ref:
                    yield ref, f"container {c.get('name')} envFrom"


def _volumes_of_secret(spec: Mapping[str, Any], secret: str) -> set[str]:
    out = set()
    for vol in spec.get("volumes") or []:
        if (vol.get("secret") or {}).get("secretName") == secret:
            out.add(vol.get("name"))
        if any((s.get("secret") or {}).get("name") == secret for s in (vol.get("projected") or {}).get("sources") or []):
            out.add(vol.get("name"))
    return out


def plan(pod: Mapping[str, Any], session: SessionView, cfg: OperatorConfig) -> Plan:
    """Check a pod against its session and return what to inject; raise Refused if it must not run."""
    spec = pod.get("spec") or {}
    where = f"VaultSession {session.namespace}/{session.name}"
    if spec.get("shareProcessNamespace"):
        raise Refused("shareProcessNamespace: true is not allowed with a VaultSession: "
                      "app containers could read the proxy's memory, and with it the real keys")
    if spec.get("hostPID"):
        raise Refused("hostPID: true is not allowed with a VaultSession: "
                      "app containers could read the proxy's memory, and with it the real keys")

    for c in spec.get("containers") or []:
        if c.get("name") == n.SIDECAR_CONTAINER:
            raise Refused(f"container name {n.SIDECAR_CONTAINER} is reserved for the oshu-vault proxy")
    ours = volumes(session.session_secret)
    for vol in spec.get("volumes") or []:
        want = next((v for v in ours if v["name"] == vol.get("name")), None)
        if want is not None and vol != want:
            raise Refused(f"volume name {vol.get('name')} is reserved for the oshu-vault injection")

    # The session Secret holds the real values: only the proxy may mount it.
    session_vols = _volumes_of_secret(spec, session.session_secret) - {n.VOLUME_CA}
    for c in _containers(spec):
        for m in c.get("volumeMounts") or []:
            if m.get("name") in session_vols:
                raise Refused(f"container {c.get('name')} mounts the session Secret {session.session_secret}, "
                              "which holds the real keys; only the oshu-vault proxy may mount it")
            if m.get("mountPath") == n.CA_MOUNT_DIR and m.get("name") != n.VOLUME_CA:
                raise Refused(f"container {c.get('name')} uses mount path {n.CA_MOUNT_DIR}, reserved for the session CA")
    for secret, what in _secret_refs(spec):
        if secret == session.session_secret and not what.startswith("volume "):
            raise Refused(f"{what} reads the session Secret {secret}, which holds the real keys; "
                          "only the oshu-vault proxy may read it")
        if secret in session.source_secrets:
            raise Refused(f"{what} references Secret {secret}, which holds the real value behind "
                          f"{session.source_secrets[secret]} in {where}; that would hand the agent the real key. "
                          "Remove the reference: the pod gets a sealed token instead")

    # Which containers: all app containers, or those the annotation names.
    app_names = [c.get("name") for c in spec.get("containers") or []]
    init_names = [c.get("name") for c in spec.get("initContainers") or [] if c.get("name") != n.SIDECAR_CONTAINER]
    wanted_raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(n.ANNOTATION_CONTAINERS)
    if wanted_raw is not None:
        targets = [x.strip() for x in wanted_raw.split(",") if x.strip()]
        unknown = [t for t in targets if t not in app_names and t not in init_names]
        if unknown or not targets:
            raise Refused(f"annotation {n.ANNOTATION_CONTAINERS} names no container of this pod: "
                          f"{', '.join(unknown) or '(empty)'}; containers are {', '.join(app_names + init_names)}")
    else:
        targets = app_names

    env_plan: dict[str, list[dict[str, str]]] = {}
    mounts: dict[str, bool] = {}
    kept: dict[str, list[str]] = {}
    warnings: list[str] = []
    wanted_env = [(name, session.tokens[name]) for name in session.env_names] + infra_env(cfg.no_proxy, cfg.sidecar.proxy_url)
    for c in _containers(spec):
        cname = c.get("name")
        if cname not in targets:
            continue
        existing = {e.get("name"): e for e in c.get("env") or []}
        add: list[dict[str, str]] = []
        for var, value in wanted_env:
            entry = existing.get(var)
            if entry is None:
                add.append({"name": var, "value": value})
            elif _env_value(entry) == value:
                continue  # already injected
            elif var in session.tokens:
                raise Refused(f"container {cname} sets {var} itself, but {where} provides it as a sealed token; "
                              f"remove {var} from the pod spec")
            else:
                kept.setdefault(cname, []).append(var)
        if kept.get(cname):
            warnings.append(f"container {cname} already sets {', '.join(kept[cname])}: kept as is; "
                            "its traffic may bypass the oshu-vault proxy or distrust the session CA")
        env_plan[cname] = add
        mounts[cname] = not any(m.get("name") == n.VOLUME_CA for m in c.get("volumeMounts") or [])

    if not session.tokens or session.phase != n.PHASE_READY:
        warnings.append(f"{where} is not Ready ({session.message or 'reconciling'}); "
                        "the proxy starts once its Secret is complete")
    record = {
        "session": session.name,
        "uid": session.uid,
        "containers": sorted(env_plan),
        "secrets": list(session.env_names),
        "sidecar": cfg.sidecar.image,
    }
    if kept:
        record["kept"] = {k: sorted(v) for k, v in sorted(kept.items())}
    return Plan(session=session, sidecar=sidecar_container(cfg.sidecar), volumes=ours, env=env_plan,
                mounts=mounts, warnings=warnings, record=record)
