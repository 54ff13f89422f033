"""oshu-vault on running pods: images into the cluster, `helm install` with them, a session
with an agent pod, and the clients an agent runs. Shared by tests/pods and the demo.

Two kinds of cluster, same code:

- the local node cluster (``LocalCluster(node=True)``): images built here (oshu_images) and
  imported into its containerd, pulled by nobody (``IfNotPresent``);
- a cluster the user has (``OSHU_E2E_KUBECONFIG``): images built here and pushed to
  ``OSHU_E2E_REGISTRY`` with podman (the user is logged in), or taken as they are from
  ``OSHU_E2E_IMAGES`` (``operator=REF,sidecar=REF,agent=REF``).

The sidecars trust the API stand-in's private CA through the chart's ``sidecar.upstreamCA``
(:func:`chart_values`), as a user's private API would be trusted: the release images as built.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from oshu_localkube.cluster import CommandError, wait_for

from . import standin
from .paths import CHART_DIR

Doc = dict[str, Any]
Log = Callable[[str], None]
SESSION_LABEL = "vault.oshu.dev/session"
SIDECAR = "oshu-vault-proxy"
#: The proxy's NO_PROXY for these runs: the chart's default minus the cluster-local suffixes,
#: because the stand-in API is a Service name (a real API is not).
NO_PROXY = ["localhost", "127.0.0.1", "::1", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]


class Kube(Protocol):
    """What the suite needs of a cluster: LocalCluster has it, so has ExternalCluster."""

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]: ...

    def helm(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]: ...


class ExternalCluster:
    """A cluster the user already has, through their kubeconfig, with the pinned kubectl/helm
    (or those on PATH)."""

    def __init__(self, kubeconfig: Path | str, kubectl: str | Path | None = None, helm: str | Path | None = None):
        self.kubeconfig = Path(kubeconfig)
        self.kubectl_path = str(kubectl or shutil.which("kubectl") or "kubectl")
        self.helm_path = str(helm or shutil.which("helm") or "helm")

    def _run(self, binary: str, args: Sequence[str], kwargs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        check = bool(kwargs.pop("check", True))
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 300)
        # The user's environment as it is: their cluster may sit behind their proxy.
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        proc = subprocess.run([binary, *args], env=env, **kwargs)
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, [binary, *args], proc.stdout, proc.stderr)
        return proc

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self._run(self.kubectl_path, args, kwargs)

    def helm(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self._run(self.helm_path, args, kwargs)


def external_from_env() -> ExternalCluster | None:
    """The user's cluster if OSHU_E2E_KUBECONFIG names one (pinned kubectl/helm when built)."""
    path = os.environ.get("OSHU_E2E_KUBECONFIG")
    if not path:
        return None
    try:
        from oshu_localkube.build import ensure_built

        tools = ensure_built(["kubectl", "helm"])
        return ExternalCluster(path, tools["kubectl"], tools["helm"])
    except Exception:
        return ExternalCluster(path)


# -- images ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    operator: str
    sidecar: str  # trusts the stand-in's CA
    agent: str
    pull_policy: str = "IfNotPresent"


def _split(ref: str) -> tuple[str, str]:
    repo, _, tag = ref.rpartition(":")
    if not repo or "/" in tag:
        raise ValueError(f"image reference {ref!r} needs a tag")
    return repo, tag


def images_from_env() -> Images | None:
    raw = os.environ.get("OSHU_E2E_IMAGES")
    if not raw:
        return None
    refs = dict(item.split("=", 1) for item in raw.split(",") if "=" in item)
    missing = {"operator", "sidecar", "agent"} - set(refs)
    if missing:
        raise ValueError(f"OSHU_E2E_IMAGES lacks {sorted(missing)} (operator=REF,sidecar=REF,agent=REF)")
    return Images(refs["operator"], refs["sidecar"], refs["agent"])


def build_images(log: Log = print) -> dict[str, Any]:
    """Build (or reuse) what the suite and the demo run: {operator, sidecar, agent: BuiltImage}."""
    from oshu_images.build import build

    built = build(["sidecar", "operator", "agent"], log=log)
    return {kind: built[kind] for kind in ("operator", "sidecar", "agent")}


def prepare_images(
    *, node: Any = None, registry: str | None = None, log: Log = print, built: Mapping[str, Any] | None = None
) -> Images:
    """Build (or reuse, or take ``built``) the images; import them into ``node`` or push them
    to ``registry``."""
    from oshu_images.build import push

    wanted = dict(built) if built else build_images(log)
    if registry:
        refs = push(wanted.values(), registry, log=log)
        by_kind = {k: refs[v.kind] for k, v in wanted.items()}
        return Images(by_kind["operator"], by_kind["sidecar"], by_kind["agent"])
    if node is not None:
        present = set(node.image_names())
        for image in wanted.values():
            if image.ref not in present:
                started = time.monotonic()
                node.import_image(image.archive)
                log(
                    f"{image.kind}: imported {image.ref} into the node's containerd ({time.monotonic() - started:.0f}s)"
                )
    return Images(wanted["operator"].ref, wanted["sidecar"].ref, wanted["agent"].ref)


# -- the chart -----------------------------------------------------------------------------------


def chart_values(images: Images, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    op_repo, op_tag = _split(images.operator)
    sc_repo, sc_tag = _split(images.sidecar)
    values: dict[str, Any] = {
        "operator": {"image": {"repository": op_repo, "tag": op_tag, "pullPolicy": images.pull_policy}},
        "sidecar": {
            "image": {"repository": sc_repo, "tag": sc_tag, "pullPolicy": images.pull_policy},
            "noProxy": NO_PROXY,
            # The API stand-in's private CA, trusted by the sidecars (never the agents) through
            # the chart: the operator copies it into each session Secret.
            "upstreamCA": {"pem": standin.ca().cert_pem.decode("ascii")},
        },
    }
    for key, value in (extra or {}).items():
        if isinstance(value, Mapping) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


def helm_install(kube: Kube, release: str, namespace: str, values: Mapping[str, Any], timeout: int = 240) -> float:
    """`helm install --wait` (the operator Deployment ready); returns the seconds it took."""
    started = time.monotonic()
    kube.helm(
        "install",
        release,
        str(CHART_DIR),
        "--namespace",
        namespace,
        "--create-namespace",
        "--wait",
        f"--timeout={timeout}s",
        "--values",
        "-",
        input=json.dumps(values),
        timeout=timeout + 30,
    )
    return time.monotonic() - started


def get_json(kube: Kube, *args: str) -> Doc:
    return json.loads(kube.kubectl("get", *args, "-o", "json").stdout)


def apply(kube: Kube, docs: Iterable[Doc]) -> None:
    kube.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)}))


def webhook_ready(kube: Kube, release: str, timeout: float = 120) -> Doc:
    """Wait until the operator has put its CA into the chart's webhook configuration."""

    def ready() -> Doc | None:
        items = get_json(kube, "mutatingwebhookconfigurations", "-l", f"app.kubernetes.io/instance={release}")["items"]
        hooks = [h for item in items for h in item.get("webhooks", [])]
        return items[0] if hooks and all(h["clientConfig"].get("caBundle") for h in hooks) else None

    return wait_for(ready, timeout=timeout, what="the operator's CA in the webhook configuration", interval=1)


def operator_pod(kube: Kube, namespace: str, release: str) -> Doc:
    pods = get_json(
        kube,
        "pods",
        "-n",
        namespace,
        "-l",
        f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator",
    )["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    if not running:
        raise LookupError(f"no running operator pod in {namespace}")
    return running[0]


# -- a session and its agents ----------------------------------------------------------------


ENV_NAME = "STANDIN_API_KEY"


@dataclass(frozen=True)
class AgentSession:
    """A namespace with a real key's Secret and a VaultSession that allows only the stand-in."""

    namespace: str
    name: str
    real_key: str
    sealed: str


def session_docs(namespace: str, session: str, real_key: str, *, allowed_host: str) -> list[Doc]:
    """The real key's Secret and a VaultSession sending it only to ``allowed_host``; every
    other host is refused (egress allowlist)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{session}-key", "namespace": namespace},
            "type": "Opaque",
            "stringData": {"key": real_key},
        },
        {
            "apiVersion": "vault.oshu.dev/v1alpha1",
            "kind": "VaultSession",
            "metadata": {"name": session, "namespace": namespace},
            "spec": {
                "secrets": [
                    {
                        "name": ENV_NAME,
                        "secretKeyRef": {"name": f"{session}-key", "key": "key"},
                        "hosts": [allowed_host],
                    }
                ],
                "ttl": "2h",
                "egress": [allowed_host],
            },
        },
    ]


def session_ready(kube: Kube, namespace: str, session: str, timeout: float = 90) -> Doc:
    def ready() -> Doc | None:
        doc = get_json(kube, "vaultsession", session, "-n", namespace)
        conds = (doc.get("status") or {}).get("conditions") or []
        return doc if any(c["type"] == "Ready" and c["status"] == "True" for c in conds) else None

    return wait_for(ready, timeout=timeout, what=f"VaultSession {namespace}/{session} Ready", interval=0.5)


#: The agent's command: first ask the sidecar's /readyz (is the proxy up before we start?),
#: keep the answer in /tmp/sidecar-at-start, then idle.
AGENT_COMMAND = (
    "code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:$ADMIN_PORT/readyz); "
    'echo "$code" > /tmp/sidecar-at-start; exec sleep infinity'
)


def agent_pod_spec(image: str, session: str, admin_port: int = 15090, pull_policy: str = "IfNotPresent") -> Doc:
    return {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 2,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "agent",
                "image": image,
                "imagePullPolicy": pull_policy,
                "command": ["sh", "-c", AGENT_COMMAND],
                "env": [{"name": "ADMIN_PORT", "value": str(admin_port)}],
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    }


def agent_pod(namespace: str, name: str, image: str, session: str, **kw: Any) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {SESSION_LABEL: session, "app": name}},
        "spec": agent_pod_spec(image, session, **kw),
    }


def agent_deployment(namespace: str, name: str, image: str, session: str, replicas: int = 3, **kw: Any) -> Doc:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, SESSION_LABEL: session}},
                "spec": agent_pod_spec(image, session, **kw),
            },
        },
    }


def pod_running(kube: Kube, namespace: str, name: str, timeout: float = 180) -> Doc:
    """Wait until every container of the pod is ready; returns the pod."""

    def ready() -> Doc | None:
        pod = get_json(kube, "pod", name, "-n", namespace)
        statuses = pod["status"].get("containerStatuses") or []
        return pod if statuses and all(s.get("ready") for s in statuses) else None

    try:
        return wait_for(ready, timeout=timeout, what=f"pod {namespace}/{name} ready", interval=0.5)
    except TimeoutError as e:
        described = kube.kubectl("-n", namespace, "describe", "pod", name, check=False).stdout
        raise TimeoutError(f"{e}\n{described[-3000:]}") from None


def exec_in(
    kube: Kube,
    namespace: str,
    pod: str,
    script: str,
    *,
    container: str = "agent",
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``kubectl exec`` a shell script in the agent container (not checked: callers look)."""
    args = [
        "-n",
        namespace,
        "exec",
        *(["-i"] if stdin is not None else []),
        pod,
        "-c",
        container,
        "--",
        "sh",
        "-c",
        script,
    ]
    return kube.kubectl(*args, input=stdin, check=False, timeout=timeout)


def clients(url: str, tag: str, env_name: str = ENV_NAME) -> dict[str, str]:
    """Shell commands, one per client, that call ``url`` with only the injected variables:
    the sealed token from ``$<env_name>``, the proxy and CA from the rest. Each prints the
    HTTP status and marks its request with ``x-client: <client>-<tag>``."""
    ENV_NAME = env_name
    git_url = url.replace("https://", f"https://x-access-token:${ENV_NAME}@", 1).rstrip("/") + "/org/repo.git"
    return {
        "curl": (
            f"curl -sS --max-time 20 -o /dev/null -w '%{{http_code}}' -H \"x-api-key: ${ENV_NAME}\" "
            f"-H 'x-client: curl-{tag}' -H 'content-type: application/json' --data '{{}}' {url}"
        ),
        "python-requests": (
            "python3 -c 'import os, requests; "
            f'r = requests.post("{url}", json={{}}, timeout=20, headers={{"authorization": "Bearer " + '
            f'os.environ["{ENV_NAME}"], "x-client": "python-requests-{tag}"}}); print(r.status_code)\''
        ),
        "node-fetch": (
            f'node -e \'fetch("{url}", {{method: "POST", body: "{{}}", headers: {{"x-api-key": '
            f'process.env.{ENV_NAME}, "x-client": "node-fetch-{tag}"}}}})'
            ".then(r => console.log(r.status), e => { console.error(String(e.cause || e)); process.exit(1) })'"
        ),
        "git": (f"git -c http.extraHeader='x-client: git-{tag}' ls-remote \"{git_url}\" >/dev/null && echo 200"),
    }


def client_of(record: Doc) -> str | None:
    return standin.header(record, "x-client")


# -- what the agent container can read ---------------------------------------------------------

#: Run inside the agent container (its own python3) with JSON on stdin: labelled needles
#: ([[label, base64 of the bytes], ...]) and a control string. Searches every file it can open
#: (outside /proc, /sys, /dev), and the environ, cmdline and readable memory of every process it
#: can see (but this scanner itself). Prints JSON: what it scanned, the [where, label] of each
#: needle found, and where it found ``control`` (a sealed token: the scan must see what the agent
#: does see).
SCAN_SCRIPT = r"""
import base64, json, os, re, sys
spec = json.load(sys.stdin)
needles = [(label, base64.b64decode(b)) for label, b in spec["needles"]]
control = spec["control"].encode()
hits, seen, files, procs, unreadable = set(), set(), 0, 0, 0
def look(where, data):
    for label, n in needles:
        if n in data:
            hits.add((where, label))
    if control in data:
        seen.add(where)
for top in os.listdir("/"):
    if top in ("proc", "sys", "dev"):
        continue
    for root, dirs, names in os.walk("/" + top, onerror=None, followlinks=False):
        for name in names:
            path = os.path.join(root, name)
            try:
                if not os.path.isfile(path) or os.path.islink(path) or os.path.getsize(path) > 64 << 20:
                    continue
                with open(path, "rb") as fh:
                    look(path, fh.read())
                files += 1
            except OSError:
                unreadable += 1
me = str(os.getpid())
for pid in filter(str.isdigit, os.listdir("/proc")):
    if pid == me:
        continue
    procs += 1
    for part in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{part}", "rb") as fh:
                look(f"/proc/{pid}/{part}", fh.read())
        except OSError:
            pass
    try:
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
            for line in maps:
                m = re.match(r"([0-9a-f]+)-([0-9a-f]+) r", line)
                if not m or "[vvar]" in line or "[vsyscall]" in line:
                    continue
                start, end = int(m[1], 16), int(m[2], 16)
                if end - start > 256 << 20:
                    continue
                try:
                    mem.seek(start)
                    look(f"/proc/{pid}/mem", mem.read(end - start))
                except (OSError, ValueError, OverflowError):
                    pass
    except OSError:
        pass
print(json.dumps({"files": files, "unreadable": unreadable, "processes": procs, "needles": len(needles),
                  "hits": sorted(hits), "control_seen_in": sorted(seen)}))
"""


def scan_agent_for(kube: Kube, namespace: str, pod: str, needles: Sequence[tuple[str, bytes]], control: str) -> Doc:
    """SCAN_SCRIPT in the pod's agent container: where each labelled needle was found."""
    spec = {"needles": [[label, base64.b64encode(b).decode()] for label, b in needles], "control": control}
    proc = kube.kubectl(
        "-n", namespace, "exec", "-i", pod, "-c", "agent", "--", "python3", "-c", SCAN_SCRIPT,
        input=json.dumps(spec), check=False, timeout=300,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"scan failed: {proc.stderr[-2000:]}")
    report: Doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def scan_agent(kube: Kube, namespace: str, pod: str, needle: str, control: str) -> Doc:
    """One needle, raw and base64: ``hits`` lists where it was found."""
    raw = needle.encode()
    report = scan_agent_for(kube, namespace, pod, [("raw", raw), ("base64", base64.b64encode(raw))], control)
    report["hits"] = sorted({where for where, _ in report["hits"]})
    return report
