"""RBAC is really enforced: a ServiceAccount is denied, then allowed by a RoleBinding, and only there."""

from __future__ import annotations

import pytest

from oshu_localkube import LocalCluster
from oshu_localkube.cluster import wait_for

pytestmark = pytest.mark.timeout(180)


def test_service_account_denied_then_allowed_by_role_binding(kube_cluster: LocalCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    agent = f"system:serviceaccount:{ns}:agent"
    kube_cluster.kubectl("create", "serviceaccount", "agent", "-n", ns)
    kube_cluster.kubectl("create", "secret", "generic", "upstream-key", "-n", ns, "--from-literal=token=value")

    def can_get_secrets(namespace: str) -> bool:
        answer = kube_cluster.kubectl("auth", "can-i", "get", "secrets", "-n", namespace, "--as", agent, check=False)
        assert answer.stdout.strip() in ("yes", "no"), answer
        return answer.stdout.strip() == "yes"

    # Denied: both the access review and a real request made as the ServiceAccount.
    assert not can_get_secrets(ns)
    denied = kube_cluster.kubectl("get", "secret", "upstream-key", "-n", ns, "--as", agent, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and agent in denied.stderr

    kube_cluster.kubectl("create", "role", "read-secrets", "-n", ns, "--verb=get,list", "--resource=secrets")
    kube_cluster.kubectl(
        "create", "rolebinding", "agent-reads-secrets", "-n", ns, "--role=read-secrets", f"--serviceaccount={ns}:agent"
    )

    wait_for(lambda: can_get_secrets(ns), timeout=30, what="the RoleBinding to take effect")
    allowed = kube_cluster.kubectl("get", "secret", "upstream-key", "-n", ns, "--as", agent, "-o", "name")
    assert allowed.stdout.strip() == "secret/upstream-key"

    # The binding is namespaced: nothing was granted elsewhere, nor any other verb.
    assert not can_get_secrets("default")
    write = kube_cluster.kubectl("auth", "can-i", "delete", "secrets", "-n", ns, "--as", agent, check=False)
    assert write.stdout.strip() == "no"


def test_unauthenticated_requests_are_refused(kube_cluster: LocalCluster) -> None:
    """No client certificate, no access: anonymous auth is off."""
    import http.client
    import ssl

    context = ssl.create_default_context(cafile=str(kube_cluster.ca_cert))
    connection = http.client.HTTPSConnection("127.0.0.1", kube_cluster.ports["apiserver"], context=context, timeout=10)
    try:
        connection.request("GET", "/api/v1/namespaces/default/secrets")
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status == 401
