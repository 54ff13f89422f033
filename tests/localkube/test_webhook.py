"""The apiserver calls a URL-based mutating webhook on loopback and applies its JSON patch to a Pod.

This is the mechanism the injection webhook relies on: a real HTTPS call out of kube-apiserver,
verified against the caBundle, and a JSONPatch applied before the Pod is stored.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from oshu_contract.pki import CertificateAuthority, new_ca
from oshu_localkube import LocalCluster
from oshu_localkube.cluster import wait_for

pytestmark = pytest.mark.timeout(180)

PATCH = [
    {"op": "add", "path": "/metadata/labels", "value": {"localkube.test/mutated": "true"}},
    {"op": "add", "path": "/spec/containers/0/env", "value": [{"name": "INJECTED_BY", "value": "test-webhook"}]},
]


@dataclass
class Webhook:
    url: str
    ca_pem: bytes
    reviews: list[dict] = field(default_factory=list)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A tiny HTTPS admission webhook on 127.0.0.1 with its own CA, answering with PATCH."""
    ca = new_ca("localkube-webhook-test-ca")
    leaf = CertificateAuthority.from_pem(ca.cert_pem, ca.key_pem).issue_leaf(["127.0.0.1"])
    reviews: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reviews.append(review)
            body = json.dumps(
                {
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "response": {
                        "uid": review["request"]["uid"],
                        "allowed": True,
                        "patchType": "JSONPatch",
                        "patch": base64.b64encode(json.dumps(PATCH).encode()).decode(),
                    },
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert.write_bytes(leaf.cert_pem)
        key.write_bytes(leaf.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield Webhook(f"https://127.0.0.1:{server.server_address[1]}/mutate", ca.cert_pem, reviews)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _pod(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]},
        }
    )


def _configuration(name: str, url: str, ca_pem: bytes, namespace: str) -> str:
    """A MutatingWebhookConfiguration for pod CREATE in ``namespace`` only (other tests share the cluster)."""
    return json.dumps(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "mutate.localkube.test.oshu.dev",
                    "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_pem).decode()},
                    "rules": [
                        {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
                    ],
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 10,
                }
            ],
        }
    )


def test_apiserver_calls_webhook_and_applies_json_patch(
    kube_cluster: LocalCluster, kube_namespace: str, webhook: Webhook
) -> None:
    name = f"localkube-test-{secrets.token_hex(4)}"
    kube_cluster.kubectl("apply", "-f", "-", input=_configuration(name, webhook.url, webhook.ca_pem, kube_namespace))
    try:
        # The apiserver picks up new webhook configurations asynchronously: probe with dry-runs
        # (allowed because sideEffects is None) until one comes back mutated.
        def probe_mutated() -> bool:
            out = kube_cluster.kubectl(
                "create", "--dry-run=server", "-n", kube_namespace, "-o", "json", "-f", "-", input=_pod("probe")
            )
            return json.loads(out.stdout)["metadata"].get("labels") == {"localkube.test/mutated": "true"}

        wait_for(probe_mutated, timeout=30, what="the webhook configuration to become active")

        kube_cluster.kubectl("create", "-n", kube_namespace, "-f", "-", input=_pod("agent"))
        stored = json.loads(kube_cluster.kubectl("get", "pod", "agent", "-n", kube_namespace, "-o", "json").stdout)
        assert stored["metadata"]["labels"] == {"localkube.test/mutated": "true"}
        assert stored["spec"]["containers"][0]["env"] == [{"name": "INJECTED_BY", "value": "test-webhook"}]
        # ServiceAccount admission ran too: the pod got the namespace's default ServiceAccount.
        assert stored["spec"]["serviceAccountName"] == "default"

        created = [r["request"] for r in webhook.reviews if not r["request"].get("dryRun")]
        assert [(r["namespace"], r["name"], r["operation"]) for r in created] == [(kube_namespace, "agent", "CREATE")]
        assert created[0]["object"]["spec"]["containers"][0]["name"] == "agent"
    finally:
        kube_cluster.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found", check=False)


def test_webhook_with_wrong_ca_fails_closed(kube_cluster: LocalCluster, kube_namespace: str, webhook: Webhook) -> None:
    """The apiserver verifies the webhook's certificate against caBundle: a stranger CA is refused."""
    other_ca = new_ca("not-the-webhook-ca")
    name = f"localkube-test-{secrets.token_hex(4)}"
    kube_cluster.kubectl("apply", "-f", "-", input=_configuration(name, webhook.url, other_ca.cert_pem, kube_namespace))
    try:

        def refused() -> bool:
            result = kube_cluster.kubectl(
                "create", "--dry-run=server", "-n", kube_namespace, "-f", "-", input=_pod("probe"), check=False
            )
            return result.returncode != 0 and "failed calling webhook" in result.stderr

        wait_for(refused, timeout=30, what="the webhook call to fail TLS verification")
        result = kube_cluster.kubectl("create", "-n", kube_namespace, "-f", "-", input=_pod("agent"), check=False)
        assert result.returncode != 0 and "x509" in result.stderr
        assert webhook.reviews == []  # never reached the handler
    finally:
        kube_cluster.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found", check=False)
