"""Pod injection, as pure functions on the pod dict: decide (or refuse), then apply.

`plan()` inspects a pod against its session and either raises `Refused` with a message
for the user or returns a `Plan` whose `apply()` mutates a pod body in place (kopf turns
that into a JSON patch). Applying a plan to an already-injected pod changes nothing, so
the webhook can be re-invoked safely.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import names as n
from . import redirect, rules
from .config import OperatorConfig, SidecarConfig
from .rules import NotReady, Refused, SessionView

__all__ = [
    "NotReady",
    "Plan",
    "Refused",
    "SessionView",
    "infra_env",
    "plan",
    "session_name_of",
    "sidecar_container",
    "volumes",
]


def session_name_of(pod: Mapping[str, Any]) -> str | None:
    """The session a pod opts into: its label, or the same-key annotation; both must agree."""
    meta = pod.get("metadata") or {}
    label = (meta.get("labels") or {}).get(n.LABEL_SESSION)
    annotation = (meta.get("annotations") or {}).get(n.ANNOTATION_SESSION)
    if label and annotation and label != annotation:
        raise Refused(rules.evaluate(rules.Subject(pod, "", label, None), [rules.BY_ID["opt-in-mismatch"]]))
    return label or annotation or None


def injected_session_of(spec: Mapping[str, Any]) -> str | None:
    """The session an injected pod was given, from its session volume (pod volumes are immutable,
    unlike the label and annotations, which an update can change or remove)."""
    for vol in spec.get("volumes") or []:
        if vol.get("name") == n.VOLUME_SESSION:
            secret = (vol.get("secret") or {}).get("secretName") or ""
            if secret.startswith(n.SESSION_SECRET_PREFIX):
                return secret[len(n.SESSION_SECRET_PREFIX) :]
    return None


# --- what gets injected ----------------------------------------------------------------------


def _probe(port: int, period: int, failures: int) -> dict[str, Any]:
    # Every field the API server would default is set, so a stored sidecar compares equal.
    return {
        "httpGet": {"path": n.SIDECAR_READY_PATH, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 1,
        "successThreshold": 1,
    }


def sidecar_args(cfg: SidecarConfig, redirected: bool = False) -> list[str]:
    """The injected sidecar's command line: every path is in the session volume (sidecar only)."""
    args = [
        "--listen",
        f"127.0.0.1:{cfg.proxy_port}",
        "--admin-listen",
        f"0.0.0.0:{cfg.admin_port}",
        "--session-file",
        n.SESSION_FILE_PATH,
        "--ca-cert",
        n.SESSION_CA_CERT_PATH,
        "--ca-key",
        n.SESSION_CA_KEY_PATH,
        "--log-level",
        cfg.log_level,
    ]
    if cfg.upstream_ca_pem:  # the reconciler writes it into the session Secret (KEY_UPSTREAM_CA)
        args += ["--upstream-ca-file", n.SESSION_UPSTREAM_CA_PATH]
    if redirected:
        args += redirect.transparent_args()
    return args


def sidecar_container(cfg: SidecarConfig, redirected: bool = False) -> dict[str, Any]:
    return {
        "name": n.SIDECAR_CONTAINER,
        "image": cfg.image,
        "imagePullPolicy": cfg.pull_policy,
        "restartPolicy": "Always",  # native sidecar: starts before, outlives the app containers
        "args": sidecar_args(cfg, redirected),
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


def volumes(session_secret: str, agent_files: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The injected volumes; `agent_files` (session Secret keys of gcp service-account JSONs: a
    throwaway key and a sealed key id, nothing real) join the CA certificate in the app containers'."""
    return [
        # Sidecar only: the session file (real values) and the CA key.
        {"name": n.VOLUME_SESSION, "secret": {"secretName": session_secret, "defaultMode": 0o444}},
        # App containers: the CA certificate and bundle, and nothing else from the Secret.
        {
            "name": n.VOLUME_CA,
            "secret": {
                "secretName": session_secret,
                "defaultMode": 0o444,
                "items": [
                    {"key": n.KEY_CA_CERT, "path": n.KEY_CA_CERT},
                    {"key": n.KEY_CA_BUNDLE, "path": n.KEY_CA_BUNDLE},
                    *({"key": key, "path": key} for key in agent_files),
                ],
            },
        },
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
    netrules: dict[str, Any] | None = None  # enforcement: redirect: the rules' init container, first

    def apply(self, pod: dict[str, Any]) -> None:
        spec = pod.setdefault("spec", {})
        ours = (n.SIDECAR_CONTAINER, n.NETRULES_CONTAINER)
        inits = [c for c in spec.get("initContainers") or [] if c.get("name") not in ours]
        spec["initContainers"] = [*([self.netrules] if self.netrules else []), self.sidecar, *inits]
        vols = spec.setdefault("volumes", [])
        for vol in self.volumes:
            idx = next((i for i, v in enumerate(vols) if v.get("name") == vol["name"]), None)
            if idx is None:
                vols.append(vol)
            elif vols[idx] != vol:
                vols[idx] = vol
        for container in _containers(spec):
            cname = str(container.get("name"))
            if self.env.get(cname):
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
            if c.get("name") not in (n.SIDECAR_CONTAINER, n.NETRULES_CONTAINER):
                yield c


def _env_value(entry: Mapping[str, Any]) -> str | None:
    return None if entry.get("valueFrom") is not None else entry.get("value", "")


def subject(pod: Mapping[str, Any], session: SessionView, enforcement: str = n.ENFORCEMENT_PROXY) -> rules.Subject:
    """What the admission rules check for this pod and session."""
    return rules.Subject(
        pod=pod,
        namespace=session.namespace,
        session_name=session.name,
        session=session,
        injected_volumes=volumes(session.session_secret, session.agent_files),
        enforcement=enforcement,
    )


def plan(pod: Mapping[str, Any], session: SessionView, cfg: OperatorConfig) -> Plan:
    """Check a pod against its session and return what to inject; raise Refused if it must not run.

    The rules run on the pod as submitted and again on the pod as the plan leaves it: a mount
    that names a volume only the injection adds is seen for what it becomes.
    """
    enforcement = redirect.enforcement_of(session.enforcement, cfg)
    redirected = enforcement == n.ENFORCEMENT_REDIRECT
    rules.check_spec(subject(pod, session, enforcement))
    spec = pod.get("spec") or {}
    where = f"VaultSession {session.namespace}/{session.name}"
    targets, _ = rules.injection_targets(pod)

    env_plan: dict[str, list[dict[str, str]]] = {}
    mounts: dict[str, bool] = {}
    kept: dict[str, list[str]] = {}
    warnings: list[str] = []
    wanted_env = list(session.env.items()) + infra_env(cfg.no_proxy, cfg.sidecar.proxy_url)
    for c in _containers(spec):
        cname = c.get("name")
        if cname not in targets:
            continue
        add, own = _container_env(c, wanted_env, session.env)
        if own:
            kept.setdefault(cname, []).extend(own)
        if kept.get(cname):
            warnings.append(
                f"container {cname} already sets {', '.join(kept[cname])}: kept as is; "
                "its traffic may bypass the oshu-vault proxy or distrust the session CA"
            )
        env_plan[cname] = add
        mounts[cname] = not any(m.get("name") == n.VOLUME_CA for m in c.get("volumeMounts") or [])

    if not session.tokens or session.phase != n.PHASE_READY:
        warnings.append(
            f"{where} is not Ready ({session.message or 'reconciling'}); the proxy starts once its Secret is complete"
        )
    result = Plan(
        session=session,
        sidecar=sidecar_container(cfg.sidecar, redirected),
        volumes=volumes(session.session_secret, session.agent_files),
        env=env_plan,
        mounts=mounts,
        warnings=warnings,
        record=_record(session, cfg, env_plan, kept),
        netrules=redirect.netrules_container(cfg.sidecar, session.redirect) if redirected else None,
    )
    if redirected:
        result.record["enforcement"] = enforcement
    after = copy.deepcopy(dict(pod))
    result.apply(after)
    rules.check_spec(subject(after, session, enforcement))
    return result


def _container_env(
    container: Mapping[str, Any], wanted: list[tuple[str, str]], session_env: Mapping[str, str]
) -> tuple[list[dict[str, str]], list[str]]:
    """One container's env: the entries to add, and the wanted variables it already sets otherwise
    (kept as they are)."""
    existing = {e.get("name"): e for e in container.get("env") or []}
    add: list[dict[str, str]] = []
    kept: list[str] = []
    for var, value in wanted:
        entry = existing.get(var)
        if entry is None:
            add.append({"name": var, "value": value})
        elif _env_value(entry) == value or var in session_env:
            continue  # already injected (a different value is refused by the rules)
        else:
            kept.append(var)
    return add, kept


def _record(
    session: SessionView, cfg: OperatorConfig, env_plan: Mapping[str, object], kept: Mapping[str, list[str]]
) -> dict[str, Any]:
    """The injection record annotated on the pod: which session, containers, secrets and sidecar."""
    record: dict[str, Any] = {
        "session": session.name,
        "uid": session.uid,
        "containers": sorted(env_plan),
        "secrets": list(session.env_names),
        "sidecar": cfg.sidecar.image,
    }
    if kept:
        record["kept"] = {k: sorted(v) for k, v in sorted(kept.items())}
    return record
