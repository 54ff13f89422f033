"""Sessions for tests: fresh sealed tokens and values, and session files laid out like kubelet's.

`new_secret` / `new_session` build a `Session` in memory; `write_k8s_secret_dir` and
`swap_k8s_secret_dir` write it the way kubelet mounts and atomically updates a Secret
(`..<timestamp>/` data dir, `..data` link, per-key links), which is what the sidecar watches.
"""

from __future__ import annotations

import json
import os
import secrets as _secrets
import shutil
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from oshu_contract.hosts import HostPattern
from oshu_contract.locations import Location
from oshu_contract.session import DEFAULT_LOCATIONS, SecretBinding, Session, loads_session, new_sealed_token

#: What a session may be given as: a `Session`, its JSON document, or the file's bytes or text.
SessionLike = Session | Mapping[str, Any] | bytes | str


def new_secret(
    name: str, hosts: Iterable[str], value: str | None = None, locations: Iterable[str] | None = None
) -> SecretBinding:
    """A secret binding with a fresh sealed token and (unless given) a random real value."""
    return SecretBinding(
        name=name,
        sealed=new_sealed_token(),
        value=value if value is not None else "sk-test-" + _secrets.token_urlsafe(24),
        hosts=tuple(HostPattern.parse(h) for h in hosts),
        locations=frozenset(Location(x) for x in locations) if locations is not None else DEFAULT_LOCATIONS,
    )


def new_session(
    *secrets: SecretBinding,
    name: str = "agents/test",
    expires_in: float | None = None,
    expires_at: datetime | None = None,
    egress: Iterable[str] | None = None,
    revoked: bool = False,
) -> Session:
    """A Session; `expires_in` (seconds from now, may be negative) is shorthand for `expires_at`."""
    if expires_in is not None:
        expires_at = datetime.now(UTC) + timedelta(seconds=expires_in)
    return Session(
        session=name,
        secrets=tuple(secrets),
        expires_at=expires_at,
        egress=tuple(HostPattern.parse(h) for h in egress) if egress is not None else None,
        revoked=revoked,
    )


def session_bytes(session: SessionLike) -> bytes:
    if isinstance(session, Session):
        return session.to_json()
    if isinstance(session, (bytes, str)):
        return session.encode() if isinstance(session, str) else session
    return json.dumps(session).encode()


def write_k8s_secret_dir(directory: Path, files: Mapping[str, bytes]) -> None:
    """Lay out `files` like kubelet mounts a Secret: `..<ts>/` data dir, `..data` link, per-key links."""
    directory.mkdir(parents=True, exist_ok=True)
    swap_k8s_secret_dir(directory, files)
    for key in files:
        link = directory / key
        if not link.is_symlink():
            link.symlink_to(Path("..data") / key)


def swap_k8s_secret_dir(directory: Path, files: Mapping[str, bytes]) -> None:
    """Kubelet's atomic update: write a new timestamped dir, rename a new `..data` link over the old."""
    stamp = "..{}.{}".format(time.strftime("%Y_%m_%d_%H_%M_%S"), _secrets.token_hex(4))
    data_dir = directory / stamp
    data_dir.mkdir()
    for key, content in files.items():
        (data_dir / key).write_bytes(content)
    tmp_link = directory / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    tmp_link.symlink_to(stamp)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    os.replace(tmp_link, directory / "..data")
    if old is not None and old != stamp:
        shutil.rmtree(directory / old, ignore_errors=True)


def session_hosts(session: SessionLike) -> list[str]:
    """Every exact host named by the session's secrets and egress (wildcards are skipped)."""
    if not isinstance(session, Session):
        session = loads_session(session_bytes(session))
    names: list[str] = []
    for pattern in [p for s in session.secrets for p in s.hosts] + list(session.egress or ()):
        if not pattern.wildcard and str(pattern) not in names:
            names.append(str(pattern))
    return names
