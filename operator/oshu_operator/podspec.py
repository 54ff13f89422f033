"""A pod spec as the admission rules see it: every container of every kind, every reference to a
Secret and every use of a volume by name.

The walkers go by the API's naming conventions rather than a list of volume types or
fields, so that no way of reaching a Secret is checked in one place and missed in another
(rules.py has the why). Pure: dicts in, small frozen records out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import names as n

KIND_INIT = "initContainers"
KIND_APP = "containers"
KIND_EPHEMERAL = "ephemeralContainers"
#: Every list of containers a pod spec has; every container rule sees all of them.
CONTAINER_KINDS = (KIND_INIT, KIND_APP, KIND_EPHEMERAL)
_KIND_WORD = {KIND_INIT: "init container", KIND_APP: "container", KIND_EPHEMERAL: "ephemeral container"}


@dataclass(frozen=True, slots=True)
class Container:
    kind: str  # one of CONTAINER_KINDS
    name: str
    body: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"{_KIND_WORD[self.kind]} {self.name}"

    @property
    def is_proxy(self) -> bool:
        """The injected sidecar (an init container of the reserved name; apply() replaces any other)."""
        return self.kind == KIND_INIT and self.name == n.SIDECAR_CONTAINER

    @property
    def is_netrules(self) -> bool:
        """The injected redirect-rules init container (enforcement: redirect; apply() replaces any other)."""
        return self.kind == KIND_INIT and self.name == n.NETRULES_CONTAINER

    @property
    def security(self) -> Mapping[str, Any]:
        return self.body.get("securityContext") or {}


@dataclass(frozen=True, slots=True)
class SecretRef:
    secret: str
    where: str  # e.g. "volume steal (csi.nodePublishSecretRef)", "ephemeral container debug envFrom"
    container: Container | None = None
    volume: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class VolumeUse:
    container: Container
    volume: str
    how: str  # e.g. "mounts volume x at /steal"
    path: str | None = None  # mountPath, for mounts


@dataclass(frozen=True, slots=True)
class Hit:
    """One violation of a rule: where it is, and the container responsible (None: the pod)."""

    where: str
    container: Container | None = None


def containers(spec: Mapping[str, Any]) -> Iterator[Container]:
    """Every container of every kind, the injected proxy included (rules exempt it by `is_proxy`)."""
    for kind in CONTAINER_KINDS:
        for c in spec.get(kind) or []:
            if isinstance(c, Mapping):
                yield Container(kind, str(c.get("name", "")), c)


def volume_secret_names(source: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, Secret name) for every field of a volume that names a Secret.

    Walks the whole volume by the API's naming conventions rather than a list of volume types,
    so sources added later are covered too: `secretName` (secret, azureFile), `*secretRef` /
    `*SecretRef` objects (csi.nodePublishSecretRef, cephfs, cinder, flexVolume, iscsi, rbd,
    scaleIO, storageos), and `secret: {name}` (projected sources).
    """
    for key, value in source.items():
        here = f"{path}.{key}" if path else key
        if key == "secretName" and isinstance(value, str):
            yield here, value
        elif isinstance(value, Mapping):
            if (key.lower().endswith("secretref") or key == "secret") and isinstance(value.get("name"), str):
                yield f"{here}.name", value["name"]
            yield from volume_secret_names(value, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield from volume_secret_names(item, f"{here}[{i}]")


def secret_refs(spec: Mapping[str, Any]) -> Iterator[SecretRef]:
    """Every reference to a Secret in a pod spec: volumes, imagePullSecrets, env and envFrom of every container."""
    for vol in spec.get("volumes") or []:
        source = {k: v for k, v in vol.items() if k != "name"}
        for where, name in volume_secret_names(source):
            yield SecretRef(name, f"volume {vol.get('name')} ({where})", volume=vol)
    for ref in spec.get("imagePullSecrets") or []:
        if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
            yield SecretRef(ref["name"], "imagePullSecrets")
    for c in containers(spec):
        for e in c.body.get("env") or []:
            secret = ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
            if isinstance(secret, str):
                yield SecretRef(secret, f"{c.label} env {e.get('name')} (valueFrom.secretKeyRef)", container=c)
        for ef in c.body.get("envFrom") or []:
            secret = (ef.get("secretRef") or {}).get("name")
            if isinstance(secret, str):
                yield SecretRef(secret, f"{c.label} envFrom (secretRef)", container=c)


def volume_uses(spec: Mapping[str, Any]) -> Iterator[VolumeUse]:
    """Every use of a volume by name, by any container: mounts, block devices and env files."""
    for c in containers(spec):
        for m in c.body.get("volumeMounts") or []:
            path = m.get("mountPath")
            yield VolumeUse(
                c,
                str(m.get("name")),
                f"mounts volume {m.get('name')} at {path}",
                path if isinstance(path, str) else None,
            )
        for d in c.body.get("volumeDevices") or []:
            yield VolumeUse(c, str(d.get("name")), f"uses volume {d.get('name')} as device {d.get('devicePath')}")
        for e in c.body.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("fileKeyRef") or {}
            if isinstance(ref.get("volumeName"), str):
                yield VolumeUse(c, ref["volumeName"], f"reads env {e.get('name')} from volume {ref['volumeName']}")


def injection_targets(pod: Mapping[str, Any]) -> tuple[list[str], list[str] | None]:
    """(containers to inject, names the containers annotation gives that match none; None without it)."""
    spec = pod.get("spec") or {}
    app = [str(c.get("name")) for c in spec.get(KIND_APP) or []]
    ours = (n.SIDECAR_CONTAINER, n.NETRULES_CONTAINER)
    init = [str(c.get("name")) for c in spec.get(KIND_INIT) or [] if c.get("name") not in ours]
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(n.ANNOTATION_CONTAINERS)
    if raw is None:
        return app, None
    named = [x.strip() for x in str(raw).split(",") if x.strip()]
    return named, [t for t in named if t not in app and t not in init]
