"""The README's first command (`make demo`): the whole oshu-vault flow on running pods.

Starts a local cluster with a node (containerd, kubelet, ...; or uses yours, see below), builds
the images here once (debootstrap base, Dockerfile.operator, Dockerfile.sidecar; later runs
reuse them), `helm install`s the chart with them so the operator runs as a Pod behind the
chart's webhook Service, starts a local HTTPS stand-in of an API as a pod with its own CA,
applies manifests/examples (a Secret with the real key, a VaultSession, a labelled Pod; the
host is the stand-in's and the image the demo's agent image), shows the Pod as the API server
stored it after injection, then, inside the agent container (kubectl exec), sends the sealed
token with curl: the stand-in receives the real key; the same token to a host the session does
not allow gets nothing. Cleans up after itself; exits non-zero if a step does not behave as
described.

Your own cluster: OSHU_E2E_KUBECONFIG=<kubeconfig> and OSHU_E2E_REGISTRY=<registry/prefix>
(images pushed there with podman; you are logged in) or OSHU_E2E_IMAGES=operator=REF,sidecar=REF,agent=REF.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oshu_localkube import LocalCluster
from oshu_localkube import node as lk_node
from oshu_localkube.cluster import wait_for
from oshu_operator import names as n

from . import examples, pods, standin
from .paths import CHART_DIR, EXAMPLES_DIR, REPO_ROOT

RELEASE = "oshu-vault"
NAMESPACE = "oshu-vault"
API_NAMESPACE = "oshu-demo-api"
STEPS = 8
#: How long to wait for the machine's one node if another session holds it.
NODE_WAIT = float(os.environ.get("OSHU_NODE_WAIT", "600"))


class DemoFailure(RuntimeError):
    """A step did not show what the demo claims; the message says which and why."""


def _bold(text: str) -> str:
    return f"\033[1m{text}\033[0m" if sys.stdout.isatty() else text


class Narrator:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.step = 0

    def title(self, text: str) -> None:
        print(f"\n{_bold('oshu-vault demo')}: {text}", flush=True)

    def begin(self, text: str) -> float:
        self.step += 1
        print("\n" + _bold(f"[{self.step}/{STEPS}] {text}"), flush=True)
        return time.monotonic()

    def say(self, text: str, indent: int = 6) -> None:
        print(textwrap.indent(text, " " * indent), flush=True)

    def done(self, since: float, what: str = "done") -> None:
        self.say(f"-> {what} ({time.monotonic() - since:.1f}s)")


def _short(value: str, keep: int = 14) -> str:
    return value if len(value) <= keep + 1 else value[:keep] + "…"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailure(message)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


# -- the steps ----------------------------------------------------------------------------------
def show_pod(tell: Narrator, pod: dict[str, Any], real: str, sealed: str) -> None:
    spec = pod["spec"]
    sidecars = [c for c in spec.get("initContainers", []) if c["name"] == n.SIDECAR_CONTAINER]
    _check(len(sidecars) == 1, "the Pod was not injected with the sidecar")
    sidecar = sidecars[0]
    tell.say(f"initContainers[{n.SIDECAR_CONTAINER}]  (a native sidecar: restartPolicy {sidecar.get('restartPolicy')})")
    tell.say(
        f"image {sidecar['image']}, runs as uid {sidecar['securityContext'].get('runAsUser')}, "
        f"read-only root, no capabilities; startup probe GET :{n.SIDECAR_ADMIN_PORT}{n.SIDECAR_READY_PATH}",
        8,
    )
    tell.say("args: " + " ".join(sidecar.get("args", [])), 8)
    for mount in sidecar.get("volumeMounts", []):
        tell.say(f"mounts {mount['name']} at {mount['mountPath']}", 8)
    for container in spec["containers"]:
        tell.say(f"containers[{container['name']}]  (the agent; image {container['image']})")
        for var in container.get("env", []):
            value = var.get("value", "<from " + ",".join(var.get("valueFrom", {})) + ">")
            tell.say(f"{var['name']}={value}", 8)
        for mount in container.get("volumeMounts", []):
            tell.say(f"mounts {mount['name']} at {mount['mountPath']} (read-only: {mount.get('readOnly', False)})", 8)
    for volume in spec.get("volumes", []):
        source = volume.get("secret", {}).get("secretName") or ",".join(k for k in volume if k != "name")
        items = [i["key"] for i in volume.get("secret", {}).get("items", [])]
        tell.say(f"volume {volume['name']}: {source}" + (f" (only {', '.join(items)})" if items else ""))
    app_env = {v["name"]: v.get("value") for c in spec["containers"] for v in c.get("env", [])}
    _check(app_env.get("ANTHROPIC_API_KEY") == sealed, "the agent's ANTHROPIC_API_KEY is not the sealed token")
    _check(real not in json.dumps(pod), "the real key appears in the Pod object")
    tell.say(
        f"The agent sees ANTHROPIC_API_KEY={_short(sealed, 20)} and the proxy variables; the real key appears "
        "nowhere in the Pod object (checked).",
        6,
    )


@contextlib.contextmanager
def cluster_for_demo(tell: Narrator) -> Iterator[tuple[Any, Any]]:
    """(kube, node): the user's cluster (node None), or a fresh local node cluster, stopped after."""
    external = pods.external_from_env()
    if external is not None:
        if not external.kubeconfig.is_file():
            raise DemoFailure(f"OSHU_E2E_KUBECONFIG={external.kubeconfig}: no such file")
        if not (os.environ.get("OSHU_E2E_REGISTRY") or os.environ.get("OSHU_E2E_IMAGES")):
            raise DemoFailure(
                "OSHU_E2E_KUBECONFIG needs OSHU_E2E_REGISTRY (images are pushed there) or "
                "OSHU_E2E_IMAGES=operator=REF,sidecar=REF,agent=REF"
            )
        tell.say(f"your cluster: KUBECONFIG={external.kubeconfig}")
        yield external, None
        return
    from oshu_images.podman import available

    problems = lk_node.missing_prerequisites() + ([available()] if available() else [])
    if problems:
        raise DemoFailure(
            "this machine cannot run the local node: "
            + "; ".join(p for p in problems if p)
            + " (`make debian` installs the Debian packages; or use your cluster: OSHU_E2E_KUBECONFIG)"
        )
    deadline = time.monotonic() + NODE_WAIT
    said = False
    while True:
        cluster = LocalCluster(node=True, ready_timeout=180, log=lambda m: tell.say(m, 8))
        try:
            cluster.start()
            break
        except lk_node.NodeBusyError as busy:
            if time.monotonic() > deadline:
                raise DemoFailure(f"the machine's node stays busy: {busy}") from None
            if not said:
                tell.say(f"waiting for the machine's node (one per machine): {busy}")
                said = True
            time.sleep(5)
    try:
        yield cluster, cluster.node
    finally:
        cluster.stop()


def demo_objects(agent_image: str, api_host: str, pull_policy: str) -> dict[str, Any]:
    """manifests/examples, pointed at the stand-in (host) and the demo's agent image."""
    docs = copy.deepcopy(examples.load())
    for entry in docs["VaultSession"]["spec"]["secrets"]:
        entry["hosts"] = [api_host]
    docs["VaultSession"]["spec"]["egress"] = [api_host]
    (container,) = docs["Pod"]["spec"]["containers"]
    container.update(image=agent_image, imagePullPolicy=pull_policy, command=["sleep", "infinity"])
    return docs


def _cleanup(kube: Any, namespaces: list[str]) -> None:
    kube.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout=120s", check=False)
    for ns in namespaces:
        kube.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def run(tell: Narrator) -> None:
    tell.title("a real API key used by an agent pod that never holds it.")
    with contextlib.ExitStack() as stack:
        t = tell.begin("A Kubernetes cluster with a node: pods really run")
        kube, node = stack.enter_context(cluster_for_demo(tell))
        if node is not None:
            tell.say(
                "local: etcd, kube-apiserver, controller-manager, scheduler, kubelet + containerd, kube-proxy, "
                "CoreDNS\n(pinned builds; addresses never leave this machine)"
            )
            tell.done(t, f"API server at {kube.server}")
        else:
            tell.done(t)

        t = tell.begin("Images: Dockerfile.operator and Dockerfile.sidecar (local Debian base), an agent image")
        registry = os.environ.get("OSHU_E2E_REGISTRY")
        images = pods.images_from_env() or pods.prepare_images(
            node=node, registry=registry, log=lambda m: tell.say(m, 8)
        )
        tell.say(f"operator {images.operator}\nsidecar  {images.sidecar}\nagent    {images.agent}")
        tell.done(t)

        docs = demo_objects(images.agent, standin.host(API_NAMESPACE), images.pull_policy)
        ns = docs["Namespace"]["metadata"]["name"]
        stack.callback(_cleanup, kube, [ns, API_NAMESPACE, NAMESPACE])

        t = tell.begin(f"helm install {RELEASE} {_rel(CHART_DIR)} --namespace {NAMESPACE} --create-namespace --wait")
        values = pods.chart_values(images)
        tell.say(
            f"--set operator.image=...,sidecar.image=...,sidecar.noProxy={{{','.join(pods.NO_PROXY)}}}\n"
            "--set-file sidecar.upstreamCA.pem=<the API stand-in's CA>\n"
            "(noProxy without the .svc suffixes: the demo's API is a cluster Service name; the stand-in's\n"
            "private CA is trusted by the sidecars only, through the chart)"
        )
        seconds = pods.helm_install(kube, RELEASE, NAMESPACE, values)
        pods.webhook_ready(kube, RELEASE)
        op = pods.operator_pod(kube, NAMESPACE, RELEASE)
        tell.say(
            f"the operator runs as Pod {NAMESPACE}/{op['metadata']['name']} with ServiceAccount "
            f"{op['spec']['serviceAccountName']};\nthe API server calls its webhook through the chart's "
            "Service, verifying the operator's own CA"
        )
        tell.done(t, f"helm took {seconds:.1f}s")

        t = tell.begin("A local HTTPS stand-in of the API, as a pod with its own CA")
        kube.kubectl("create", "namespace", API_NAMESPACE)
        pods.apply(kube, standin.manifests(API_NAMESPACE, images.agent, images.pull_policy))
        pods.pod_running(kube, API_NAMESPACE, standin.NAME)
        api_host, other_host = standin.host(API_NAMESPACE), standin.host(API_NAMESPACE, standin.OTHER)
        tell.say(
            f"https://{api_host} (the allowed host)\nhttps://{other_host} (same pod, a host the session does not allow)"
        )
        tell.done(t)

        t = tell.begin(f"kubectl apply -f {_rel(EXAMPLES_DIR)}/  (host: the stand-in, image: the agent image)")
        real = examples.real_key(docs)
        session_name = docs["VaultSession"]["metadata"]["name"]
        pods.apply(kube, [docs["Namespace"], docs["Secret"], docs["VaultSession"]])
        session = pods.session_ready(kube, ns, session_name)
        sealed = session["status"]["tokens"]["ANTHROPIC_API_KEY"]
        tell.say(f"Secret {ns}/anthropic holds the real key ({_short(real)}, {len(real)} characters)")
        tell.say(f"VaultSession {ns}/{session_name}: Ready; sealed token for ANTHROPIC_API_KEY: {sealed}")
        pods.apply(kube, [docs["Pod"]])
        pod_name = docs["Pod"]["metadata"]["name"]
        pod = pods.pod_running(kube, ns, pod_name)
        tell.done(t, f"Pod {ns}/{pod_name} running (label {n.LABEL_SESSION}={session_name})")

        t = tell.begin("The Pod as the API server stored it, after the webhook injected it")
        show_pod(tell, pod, real, sealed)
        statuses = {s["name"]: s for s in pod["status"].get("initContainerStatuses", [])}
        sidecar_status = statuses.get(n.SIDECAR_CONTAINER, {})
        app_status = {s["name"]: s for s in pod["status"].get("containerStatuses", [])}.get("agent", {})
        _check(bool(sidecar_status.get("ready")), "the sidecar is not ready")
        sidecar_started = sidecar_status.get("state", {}).get("running", {}).get("startedAt", "")
        app_started = app_status.get("state", {}).get("running", {}).get("startedAt", "")
        _check(
            bool(sidecar_started) and sidecar_started <= app_started, "the agent container started before the sidecar"
        )
        tell.say(f"kubelet: {n.SIDECAR_CONTAINER} started and ready before the agent container started")
        tell.done(t)

        t = tell.begin("Inside the agent container: curl with the sealed token to the allowed host")
        url = f"https://{api_host}/v1/messages"
        tag = secrets.token_hex(3)
        command = pods.clients(url, tag, env_name="ANTHROPIC_API_KEY")["curl"]
        tell.say(
            f"$ kubectl -n {ns} exec {pod_name} -c agent -- sh -c \\\n"
            f"    'curl -H \"x-api-key: $ANTHROPIC_API_KEY\" --data {{...}} {url}'"
        )
        result = pods.exec_in(kube, ns, pod_name, command)
        code = result.stdout.strip()
        _check(result.returncode == 0 and code == "200", f"the allowed request failed: {code} {result.stderr.strip()}")
        received = [r for r in standin.requests_seen(kube, API_NAMESPACE) if pods.client_of(r) == f"curl-{tag}"]
        _check(len(received) == 1, "the stand-in API did not receive the request")
        got = standin.credential(received[0])
        _check(got == real, "the stand-in API did not receive the real key")
        tell.say(f"-> HTTP 200. The stand-in received x-api-key: {_short(got or '')} = the real key from the Secret;")
        tell.say(f"   the agent sent {_short(sealed, 20)} (its only credential), its sidecar swapped it.")
        tell.done(t)

        t = tell.begin("The same sealed token, sent to a host the session does not allow")
        bad = pods.clients(f"https://{other_host}/collect", tag + "x", env_name="ANTHROPIC_API_KEY")["curl"]
        tell.say(f'$ curl -H "x-api-key: $ANTHROPIC_API_KEY" --data {{...}} https://{other_host}/collect')
        result = pods.exec_in(kube, ns, pod_name, bad)
        _check(result.stdout.strip() != "200", "the request to a host outside the session succeeded")
        time.sleep(1)
        leaked = [
            r for r in standin.requests_seen(kube, API_NAMESPACE) if (r.get("host") or "").startswith(standin.OTHER)
        ]
        _check(not leaked, "something reached the stand-in under the disallowed host")

        def refusal_logged() -> str:
            logs = kube.kubectl("-n", ns, "logs", pod_name, "-c", n.SIDECAR_CONTAINER).stdout
            return next((line for line in logs.splitlines() if other_host in line), "")

        try:
            refusal = wait_for(refusal_logged, timeout=10, what="the sidecar's audit line", interval=0.5)
        except TimeoutError:
            refusal = ""
        logs = kube.kubectl("-n", ns, "logs", pod_name, "-c", n.SIDECAR_CONTAINER).stdout
        curl_said = (result.stderr.strip().splitlines() or [""])[0].removeprefix("curl: ")
        tell.say(f"-> refused (curl: {curl_said[:120]}); nothing reached the host.")
        if refusal:
            tell.say(f"   sidecar log: {refusal[:300]}")
        op_logs = kube.kubectl("-n", NAMESPACE, "logs", op["metadata"]["name"], check=False).stdout
        _check(real not in logs + op_logs, "the real key appears in the sidecar or operator log")
        tell.say("Neither the sidecar's nor the operator's log contains the real key (checked).")
        tell.done(t)
        print(
            "\nCleaning up: helm uninstall, the demo's namespaces"
            + (", and the local cluster (its state directory is removed)." if node is not None else "."),
            flush=True,
        )
    summary = f"""
{_bold("What this showed")} ({time.monotonic() - tell.started:.0f}s in all):
  - One `helm install` with the images built from Dockerfile.operator and Dockerfile.sidecar
    ran the operator as a Pod under the chart's ServiceAccount; the API server reached its
    injection webhook through the chart's Service and TLS.
  - A VaultSession turned the Secret's real key into a sealed token; a pod opted in with one
    label, got the native proxy sidecar (ready before the agent started), the sealed token,
    proxy and CA variables. The real key is in neither the pod spec nor the agent container.
  - Inside the agent container, curl sent the sealed token and the API received the real key;
    the same token sent to any other host: refused, nothing sent.
"""
    print(summary, flush=True)


def main() -> int:
    tell = Narrator()
    try:
        run(tell)
    except KeyboardInterrupt:
        print("\ndemo interrupted; cleaned up", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"\nDEMO FAILED at step {tell.step}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0
