"""`helm test` for oshu-vault: does the API server's path to the injection webhook work?

Reads the chart's MutatingWebhookConfiguration with the test's ServiceAccount, then sends the
injection endpoint exactly what the API server would send for a pod opting into a VaultSession
that does not exist, over TLS verified with the configuration's own caBundle. Passing means the
Service routes to a running operator, the caBundle matches its serving certificate, and the
operator refuses the pod with a message naming the missing session. Standard library only.

Environment: WEBHOOK_CONFIG (name), TEST_NAMESPACE (a namespace the webhook serves), and the
usual in-pod KUBERNETES_SERVICE_HOST/PORT; SA_DIR overrides the ServiceAccount mount.
"""

import base64
import json
import os
import secrets
import ssl
import sys
import tempfile
import urllib.error
import urllib.request

SA_DIR = os.environ.get("SA_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
WEBHOOK_NAME = "inject.pods.vault.oshu.dev"
TIMEOUT = 15


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def api_get(path):
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    with open(os.path.join(SA_DIR, "token")) as f:
        token = f.read().strip()
    context = ssl.create_default_context(cafile=os.path.join(SA_DIR, "ca.crt"))
    request = urllib.request.Request(f"https://{host}:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=TIMEOUT) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        fail(f"GET {path}: HTTP {e.code}: {e.read().decode(errors='replace')[:300]}")


def webhook_url(client_config):
    if client_config.get("url"):
        return client_config["url"]
    service = client_config["service"]
    return f"https://{service['name']}.{service['namespace']}.svc:{service.get('port', 443)}{service.get('path', '')}"


def review(namespace, session):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "oshu-vault-helm-test",
            "namespace": namespace,
            "labels": {"vault.oshu.dev/session": session},
        },
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": secrets.token_hex(16),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "oshu-vault-helm-test",
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:helm-test"},
            "object": pod,
            "oldObject": None,
            "dryRun": True,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def main():
    name = os.environ["WEBHOOK_CONFIG"]
    namespace = os.environ["TEST_NAMESPACE"]
    config = api_get(f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}")
    hooks = {h["name"]: h for h in config.get("webhooks") or []}
    if WEBHOOK_NAME not in hooks:
        fail(f"{name} has no webhook {WEBHOOK_NAME}")
    client_config = hooks[WEBHOOK_NAME]["clientConfig"]
    if not client_config.get("caBundle"):
        fail(f"{name}: caBundle is empty; the operator (or cert-manager) has not written it yet")
    print(f"ok: {name} found with a caBundle", flush=True)

    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as ca:
        ca.write(base64.b64decode(client_config["caBundle"]))
        ca.flush()
        context = ssl.create_default_context(cafile=ca.name)
    session = f"helm-test-missing-{secrets.token_hex(3)}"
    url = webhook_url(client_config)
    body = json.dumps(review(namespace, session)).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=TIMEOUT) as response:
            answer = json.load(response)
    except (OSError, ValueError) as e:
        fail(f"POST {url}: {e}")
    print(f"ok: {url} answered over TLS verified with the caBundle", flush=True)

    result = answer.get("response") or {}
    message = (result.get("status") or {}).get("message", "")
    if result.get("allowed") is not False or session not in message:
        fail(f"expected a refusal naming session {session}, got {json.dumps(result)[:400]}")
    print(f"ok: a pod naming a missing session is refused: {message}", flush=True)
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
