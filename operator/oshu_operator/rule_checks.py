"""The admission rules' checks: one pure function per rule, from a Subject to the places it is violated.

The registry that gives each check its id and message is rules.RULES; the pod walkers the
checks share are in podspec.py.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from . import names as n
from .podspec import (
    KIND_EPHEMERAL,
    KIND_INIT,
    Container,
    Hit,
    containers,
    injection_targets,
    secret_refs,
    volume_secret_names,
    volume_uses,
)

if TYPE_CHECKING:
    from .rules import Subject

#: Volumes only the proxy may use: the session Secret (session file, CA key) and its scratch space.
PROXY_VOLUMES = (n.VOLUME_SESSION, n.VOLUME_TMP)


def _is_ours(subject: Subject, vol: Mapping[str, Any] | None) -> bool:
    return vol is not None and any(vol == mine for mine in subject.injected_volumes)


def _volumes_by_name(spec: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(v.get("name")): v for v in spec.get("volumes") or [] if isinstance(v, Mapping)}


def session_missing(s: Subject) -> Iterator[Hit]:
    if s.session is None:
        yield Hit(s.where)


def session_deleting(s: Subject) -> Iterator[Hit]:
    if s.session is not None and s.session.deleting:
        yield Hit(s.where)


def session_expired(s: Subject) -> Iterator[Hit]:
    if s.session is not None and not s.session.deleting and s.session.phase == n.PHASE_EXPIRED:
        yield Hit(s.where)


def session_invalid(s: Subject) -> Iterator[Hit]:
    if s.session is not None and not s.session.deleting and s.session.phase == n.PHASE_INVALID:
        yield Hit(f"{s.where} is invalid: {s.session.message}")


def session_not_ready(s: Subject) -> Iterator[Hit]:
    if s.session is None or s.session.deleting or s.session.phase in (n.PHASE_EXPIRED, n.PHASE_INVALID):
        return
    missing = s.session.missing_tokens
    if missing:
        yield Hit(f"{s.where} has no sealed token yet for {', '.join(missing)}")


def opt_in_mismatch(s: Subject) -> Iterator[Hit]:
    meta = s.pod.get("metadata") or {}
    label = (meta.get("labels") or {}).get(n.LABEL_SESSION)
    annotation = (meta.get("annotations") or {}).get(n.ANNOTATION_SESSION)
    if label and annotation and label != annotation:
        yield Hit(f"label {n.LABEL_SESSION}={label!r} and annotation {n.ANNOTATION_SESSION}={annotation!r}")


def containers_annotation_unknown(s: Subject) -> Iterator[Hit]:
    named, unknown = injection_targets(s.pod)
    if unknown is None:
        return
    if unknown or not named:
        yield Hit(f"annotation {n.ANNOTATION_CONTAINERS} names {', '.join(unknown) or 'nothing'}")


def flag(key: str) -> Callable[[Subject], Iterator[Hit]]:
    def check(s: Subject) -> Iterator[Hit]:
        if s.spec.get(key):
            yield Hit(f"{key}: true")

    return check


def reserved_container_name(s: Subject) -> Iterator[Hit]:
    """The injection's names: as an app or debug container always; the rules' init container
    without redirect (with it, the injection replaces that container by its own)."""
    for c in containers(s.spec):
        if c.name in (n.SIDECAR_CONTAINER, n.NETRULES_CONTAINER) and c.kind != KIND_INIT:
            yield Hit(c.label, c)
        elif c.is_netrules and s.enforcement != n.ENFORCEMENT_REDIRECT:
            yield Hit(f"{c.label} (the session's enforcement is not {n.ENFORCEMENT_REDIRECT})", c)


def reserved_volume_name(s: Subject) -> Iterator[Hit]:
    ours = {str(v["name"]): v for v in s.injected_volumes}
    for vol in s.spec.get("volumes") or []:
        want = ours.get(str(vol.get("name")))
        if want is not None and vol != want:
            yield Hit(f"volume {vol.get('name')}")


def proxy_volume_use(s: Subject) -> Iterator[Hit]:
    for use in volume_uses(s.spec):
        if use.volume in PROXY_VOLUMES and not use.container.is_proxy:
            yield Hit(f"{use.container.label} {use.how}", use.container)


def _sensitive(s: Subject, secret: str) -> bool:
    """A session Secret, or a Secret behind one of the session's secrets (any Secret if the session is unknown)."""
    return secret.startswith(n.SESSION_SECRET_PREFIX) or s.session is None or secret in s.session.source_secrets


def secret_volume_use(s: Subject) -> Iterator[Hit]:
    """By resolution (use -> volume -> Secret): sees what a use becomes once the volumes are final,
    and catches a debug container using a volume whose Secret joined the session after the pod."""
    vols = _volumes_by_name(s.spec)
    for use in volume_uses(s.spec):
        vol = vols.get(use.volume)
        if vol is None or use.container.is_proxy or (vol.get("name") == n.VOLUME_CA and _is_ours(s, vol)):
            continue
        source = {k: v for k, v in vol.items() if k != "name"}
        secrets = sorted({name for _, name in volume_secret_names(source) if _sensitive(s, name)})
        if secrets:
            yield Hit(f"{use.container.label} {use.how}, which holds Secret {', '.join(secrets)}", use.container)


def session_secret_reference(s: Subject) -> Iterator[Hit]:
    for ref in secret_refs(s.spec):
        if ref.secret.startswith(n.SESSION_SECRET_PREFIX) and not _is_ours(s, ref.volume):
            yield Hit(f"{ref.where} references the session Secret {ref.secret}", ref.container)


def source_secret_reference(s: Subject) -> Iterator[Hit]:
    for ref in secret_refs(s.spec):
        if ref.secret.startswith(n.SESSION_SECRET_PREFIX):
            continue  # the rule above
        if s.session is None:
            yield Hit(
                f"{ref.where} references Secret {ref.secret}, and {s.where} cannot be read to tell "
                "whether it holds one of the session's real keys",
                ref.container,
            )
        elif ref.secret in s.session.source_secrets:
            yield Hit(
                f"{ref.where} references Secret {ref.secret}, which holds the real value behind "
                f"{s.session.source_secrets[ref.secret]} in {s.where}",
                ref.container,
            )


def ca_mount_path(s: Subject) -> Iterator[Hit]:
    for use in volume_uses(s.spec):
        if use.path is None or use.volume == n.VOLUME_CA:
            continue
        path = posixpath.normpath("/" + use.path.lstrip("/"))
        if path == n.CA_MOUNT_DIR or path.startswith(n.CA_MOUNT_DIR + "/"):
            yield Hit(f"{use.container.label} {use.how}", use.container)


def session_env_set(s: Subject) -> Iterator[Hit]:
    if s.session is None:
        return
    targets, _ = injection_targets(s.pod)
    for c in containers(s.spec):
        if c.kind == KIND_EPHEMERAL or c.is_proxy or c.name not in targets:
            continue
        env = s.session.env
        for e in c.body.get("env") or []:
            var = e.get("name")
            if var in env and (e.get("valueFrom") is not None or e.get("value") != env[var]):
                yield Hit(f"{c.label} sets {var} itself, but {s.where} provides it as a sealed token", c)


def proxy_container_changed(s: Subject) -> Iterator[Hit]:
    """An update may change container images: the proxy's would run any image with the session mounted,
    the rules' init container any image as root with NET_ADMIN (it runs again if the pod sandbox is recreated)."""
    if s.old is None:
        return
    for name in (n.SIDECAR_CONTAINER, n.NETRULES_CONTAINER):
        before = next((c for c in containers(s.old.get("spec") or {}) if c.kind == KIND_INIT and c.name == name), None)
        after = next((c for c in containers(s.spec) if c.kind == KIND_INIT and c.name == name), None)
        if before is not None and (after is None or after.body != before.body):
            changed = sorted(
                k
                for k in {*before.body, *(after.body if after else {})}
                if (after.body if after else {}).get(k) != before.body.get(k)
            )
            yield Hit(f"an update changes the {name} init container ({', '.join(changed)})", after or before)


# --- enforcement: redirect -------------------------------------------------------------------------
# The redirect rules send every TCP connection to the proxy except those of the proxy's own uid;
# a container that can change the rules (NET_ADMIN, SYS_ADMIN), send raw packets (NET_RAW), run
# privileged, or run as that uid (directly, or by switching to it) would go around them.


def _redirected(s: Subject) -> Iterator[Container]:
    """Every container the redirect rules hold (all but the two the injection owns), under redirect."""
    if s.enforcement != n.ENFORCEMENT_REDIRECT:
        return
    for c in containers(s.spec):
        if not (c.is_proxy or c.is_netrules):
            yield c


def _caps(c: Container, key: str) -> set[str]:
    return {str(x).upper().removeprefix("CAP_") for x in (c.security.get("capabilities") or {}).get(key) or []}


def _run_as_user(s: Subject, c: Container) -> object:
    own = c.security.get("runAsUser")
    return own if own is not None else (s.spec.get("securityContext") or {}).get("runAsUser")


def redirect_capabilities(s: Subject) -> Iterator[Hit]:
    for c in _redirected(s):
        bad = sorted(_caps(c, "add") & set(n.REDIRECT_FORBIDDEN_CAPABILITIES))
        if bad:
            yield Hit(f"{c.label} adds capabilities {', '.join(bad)}", c)


def redirect_privileged(s: Subject) -> Iterator[Hit]:
    for c in _redirected(s):
        if c.security.get("privileged"):
            yield Hit(f"{c.label} is privileged", c)


def redirect_run_as_user(s: Subject) -> Iterator[Hit]:
    for c in _redirected(s):
        uid = _run_as_user(s, c)
        if uid is None:
            yield Hit(f"{c.label} sets no runAsUser (nor does the pod), so its image picks the uid", c)
        elif uid == n.SIDECAR_UID:
            yield Hit(f"{c.label} runs as uid {uid}", c)


def redirect_uid_switch(s: Subject) -> Iterator[Hit]:
    """A setuid binary (allowPrivilegeEscalation not false) or CAP_SETUID (root keeps it unless dropped)
    could switch a process to the proxy's uid after it started."""
    for c in _redirected(s):
        if c.security.get("allowPrivilegeEscalation") is not False:
            yield Hit(f"{c.label} does not set allowPrivilegeEscalation: false", c)
        elif "SETUID" in _caps(c, "add") or (_run_as_user(s, c) == 0 and not _caps(c, "drop") & {"ALL", "SETUID"}):
            yield Hit(f"{c.label} keeps the SETUID capability", c)


def ephemeral_targets_proxy(s: Subject) -> Iterator[Hit]:
    for c in containers(s.spec):
        if c.kind == KIND_EPHEMERAL and c.body.get("targetContainerName") == n.SIDECAR_CONTAINER:
            yield Hit(f"{c.label} targets the {n.SIDECAR_CONTAINER} container", c)
