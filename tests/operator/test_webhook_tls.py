"""In-cluster TLS mode (what the chart runs): the operator keeps its serving certificate in a
Secret and writes its CA into the chart's webhook configuration; a restart reuses both."""

from __future__ import annotations

import base64

from cryptography import x509

from oshu_operator import names as n
from oshu_operator.config import OperatorConfig
from oshu_operator.webhookconfig import configuration
from oshu_testkit.kube import wait_for
from oshu_testkit.operator_process import OperatorProcess


def test_self_managed_tls_secret_and_ca_bundle(kube, ns, tmp_path):
    name = f"oshu-vault-tls-test-{ns[-6:]}"
    # The chart's configuration: Service-based, no caBundle yet. Selects nothing here: the
    # local control plane has no Service network, so it is never called; only caBundle matters.
    body = configuration(
        name,
        OperatorConfig(namespaces=(ns,)),
        {"service": {"namespace": ns, "name": "oshu-vault-webhook", "port": 443}},
        None,
    )
    for hook in body["webhooks"]:
        hook["objectSelector"] = {"matchLabels": {"never": "matches"}}
    kube.apply(body)
    try:
        args = [
            "--webhook-tls-secret",
            f"{ns}/webhook-tls",
            "--webhook-service",
            f"{ns}/oshu-vault-webhook",
            "--webhook-config-name",
            name,
            "--namespace",
            ns,
        ]
        op = OperatorProcess(kube.cluster.kubeconfig, args=args, directory=tmp_path, webhook_config="unused")
        op.args.remove("--dev-webhook")
        with op:
            secret = wait_for(lambda: kube.get("secret", "webhook-tls", ns), 20, "TLS Secret")
            assert secret["type"] == "kubernetes.io/tls"
            ca = base64.b64decode(secret["data"]["ca.crt"])
            leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert f"oshu-vault-webhook.{ns}.svc" in sans.get_values_for_type(x509.DNSName)
            config = wait_for(
                lambda: (
                    (c := kube.get("mutatingwebhookconfiguration", name))
                    and all(h["clientConfig"].get("caBundle") for h in c["webhooks"])
                    and c
                ),
                20,
                "caBundle patched",
            )
            assert {base64.b64decode(h["clientConfig"]["caBundle"]) for h in config["webhooks"]} == {ca}
            assert config["webhooks"][0]["clientConfig"]["service"]["path"] == n.WEBHOOK_PATH
            assert kube.get("mutatingwebhookconfiguration", "unused") is None  # dev registration is off
            op.restart()
            again = kube.get("secret", "webhook-tls", ns)
            assert again["data"] == secret["data"]  # reused, not re-minted
    finally:
        kube.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found", check=False)
