"""The environment a test client gets: exactly what the webhook injects, mapped onto this host.

There is one list of injected variables, the operator's (`oshu_operator.injection.infra_env`);
the kit never keeps its own. A client in a test sees what an app container in an injected pod
sees: the proxy variables pointing at the sidecar, NO_PROXY, and the CA variables pointing at
the session CA certificate and the combined bundle (built by the operator's own
`material.ca_bundle`). Only two things differ from a pod, both forced by running on a host:
the files live in a local directory instead of the pod's mount, and the proxy URL is the
test sidecar's ephemeral port instead of the injected port.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from oshu_operator import names as n
from oshu_operator.config import DEFAULT_NO_PROXY
from oshu_operator.injection import infra_env
from oshu_operator.material import ca_bundle


def without_proxy_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without any proxy setting (`*_PROXY`, any case) and without the project's `OSHU_*` options.

    A proxy inherited from the developer's shell must never route a test's traffic (nor the
    operator's calls to the API server); a rule rather than a list, so no variable is missed.
    """
    return {k: v for k, v in env.items() if not k.lower().endswith("_proxy") and not k.startswith("OSHU_")}


def pod_env_on_host(
    injected: Iterable[tuple[str, str]],
    *,
    ca_dir: Path,
    pod_proxy_url: str,
    host_proxy_url: str,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """An app container's injected env with the pod's CA mount and proxy URL mapped to this host.

    `ca_dir` must hold the files an app container's CA mount holds (`ca.crt`, `ca-bundle.pem`).
    """
    env = without_proxy_env(os.environ if base is None else base)
    for name, value in injected:
        env[name] = value.replace(n.CA_MOUNT_DIR, str(ca_dir)).replace(pod_proxy_url, host_proxy_url)
    return env


def write_ca_mount(ca_dir: Path, ca_cert_pem: bytes, extra_ca_pems: Iterable[bytes] = ()) -> Path:
    """Write what an app container's CA mount holds: the session CA and the operator's bundle.

    `extra_ca_pems` stand in for public roots a real upstream would chain to (a test upstream's
    own CA, for blind tunnels where the client sees the upstream's certificate).
    """
    extras = b"".join(b"\n" + pem for pem in extra_ca_pems)
    ca_dir.mkdir(parents=True, exist_ok=True)
    (ca_dir / n.KEY_CA_CERT).write_bytes(ca_cert_pem + extras)
    (ca_dir / n.KEY_CA_BUNDLE).write_bytes(ca_bundle(ca_cert_pem) + extras)
    return ca_dir


def injected_client_env(
    proxy_url: str, ca_dir: Path, *, no_proxy: Iterable[str] = DEFAULT_NO_PROXY, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The env the webhook injects (default NO_PROXY), for a proxy at `proxy_url` and a CA mount at `ca_dir`."""
    in_pod = "http://127.0.0.1:0"  # any URL: replaced by `proxy_url` below
    return pod_env_on_host(
        infra_env(no_proxy, in_pod), ca_dir=ca_dir, pod_proxy_url=in_pod, host_proxy_url=proxy_url, base=base
    )
