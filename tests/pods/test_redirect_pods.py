"""`enforcement: redirect` on running pods: the real node, the chart's operator, the built images.

One namespace, two sessions allowing only the API stand-in: ``redirect`` (enforcement: redirect)
and ``proxy`` (the default), each with a running agent pod. The agent's commands start by
unsetting every proxy variable: clients that ignore the proxy. Under redirect they still reach
the stand-in only through the sidecar (key swapped), a denied host and direct TLS to the
stand-in's pod or another Service fail, the agent cannot flush the rules, and the sidecar got
ready only after the rules were in. The proxy pod is the control: the same direct connections
reach the stand-in there (so these tests can fail), and its spec has nothing of redirect.

Nothing here talks to the pods any other way than a user would: kubectl (exec, logs, get, patch).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from oshu_e2e import pods, standin
from oshu_localkube.cluster import wait_for
from oshu_operator import names as n

pytestmark = pytest.mark.timeout(900)

#: Every variable that could point a client at the proxy: the agents below run without any.
UNSET = "unset " + " ".join((*n.ENV_PROXY_VARS, *n.ENV_NO_PROXY_VARS, n.ENV_NODE_USE_ENV_PROXY)) + "; "

#: Direct TLS from the agent (python3, stdlib), certificate checks off: the question is only
#: whether the connection reaches the peer. Prints JSON; a request carries x-client: <tag>.
DIRECT_TLS = r"""
import json, socket, ssl, sys
host, port, sni, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None, sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=sni) as s:
        s.sendall(f"GET /direct HTTP/1.1\r\nHost: {sni or host}\r\nx-client: {tag}\r\nConnection: close\r\n\r\n".encode())
        print(json.dumps({"ok": True, "answer": s.recv(64).decode("latin-1")}))
except Exception as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}))
"""

#: A plain TCP connection to the redirect canary (127.86.86.1:9): what it answers, if anything.
CANARY = r"""
import json, socket
try:
    with socket.create_connection(("127.86.86.1", 9), timeout=5) as s:
        print(json.dumps({"ok": True, "answer": s.recv(64).decode("latin-1")}))
except Exception as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}))
"""


@dataclass(frozen=True)
class Agents:
    namespace: str
    redirect: pods.AgentSession  # session "redirect", pod "redirected"
    proxy: pods.AgentSession  # session "proxy", pod "proxied"


def _session(namespace: str, name: str, real: str, host: str, enforcement: str | None) -> list[dict[str, Any]]:
    docs = pods.session_docs(namespace, name, real, allowed_host=host)
    if enforcement:
        docs[1]["spec"]["enforcement"] = enforcement
    return docs


@pytest.fixture(scope="module")
def agents(pods_env: Any) -> Iterator[Agents]:
    kube = pods_env.kube
    namespace = f"agents-redirect-{secrets.token_hex(3)}"
    kube.kubectl("create", "namespace", namespace)
    try:
        made = {}
        for session, pod, enforcement in (("redirect", "redirected", "redirect"), ("proxy", "proxied", None)):
            real = "sk-real-" + secrets.token_urlsafe(24)
            pods.apply(kube, _session(namespace, session, real, pods_env.api_host, enforcement))
            sealed = pods.session_ready(kube, namespace, session)["status"]["tokens"][pods.ENV_NAME]
            image, policy = pods_env.images.agent, pods_env.images.pull_policy
            pods.apply(kube, [pods.agent_pod(namespace, pod, image, session, pull_policy=policy)])
            made[session] = pods.AgentSession(namespace, session, real, sealed)
        for pod in ("redirected", "proxied"):
            pods.pod_running(kube, namespace, pod)
        yield Agents(namespace, made["redirect"], made["proxy"])
    finally:
        kube.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def _run(pods_env: Any, agents: Agents, pod: str, script: str, timeout: float = 60) -> Any:
    return pods.exec_in(pods_env.kube, agents.namespace, pod, UNSET + script, timeout=timeout)


def _json(result: Any) -> dict[str, Any]:
    lines = result.stdout.strip().splitlines()
    assert lines, result
    out: dict[str, Any] = json.loads(lines[-1])
    return out


def _by_client(pods_env: Any, tag: str) -> list[dict[str, Any]]:
    return [r for r in pods_env.seen() if pods.client_of(r) == tag]


def _statuses(pod: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in pod["status"].get(key) or []}


def _seconds(start: str, end: str) -> float:
    """Between two API timestamps (RFC 3339, one-second resolution)."""
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_the_rules_run_first_and_the_sidecar_is_ready_only_after_them(pods_env: Any, agents: Agents) -> None:
    kube = pods_env.kube
    pod = pods.get_json(kube, "pod", "redirected", "-n", agents.namespace)
    netrules, sidecar = pod["spec"]["initContainers"]
    assert (netrules["name"], sidecar["name"]) == (n.NETRULES_CONTAINER, n.SIDECAR_CONTAINER)
    assert netrules["image"] == sidecar["image"] == pods_env.images.sidecar
    assert netrules["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert "--require-redirect" in sidecar["args"]
    statuses = _statuses(pod, "initContainerStatuses")
    done = statuses[n.NETRULES_CONTAINER]["state"]["terminated"]
    assert done["exitCode"] == 0 and done["reason"] == "Completed", done
    running = statuses[n.SIDECAR_CONTAINER]["state"]["running"]
    assert done["finishedAt"] <= running["startedAt"]
    app = _statuses(pod, "containerStatuses")["agent"]["state"]["running"]
    assert running["startedAt"] <= app["startedAt"]
    # The agent's first command asked the sidecar's /readyz: 200, so the canary had come back.
    first = pods.exec_in(kube, agents.namespace, "redirected", "cat /tmp/sidecar-at-start")
    assert first.stdout.strip() == "200", first
    # What readiness looks at: the canary comes back through the rules for the agent's uid too,
    # while in the proxy pod (no rules) the loopback address refuses it, so it cannot be faked.
    assert _json(_run(pods_env, agents, "redirected", f"python3 -c '{CANARY}'")) == {
        "ok": True,
        "answer": "OSHU-VAULT-REDIRECT-OK\n",
    }
    control = _json(_run(pods_env, agents, "proxied", f"python3 -c '{CANARY}'"))
    assert control["ok"] is False, control
    logs = kube.kubectl("-n", agents.namespace, "logs", "redirected", "-c", n.NETRULES_CONTAINER).stdout
    print(f"\n[pods] {n.NETRULES_CONTAINER} log: {logs.strip()[-600:]}")
    assert logs.strip(), "the rules container logged nothing"
    installed = [json.loads(line) for line in logs.splitlines() if '"netrules installed"' in line]
    assert installed and installed[-1]["listed_as_rendered"] is True, logs  # what --check would compare
    # Measured, not asserted (one-second resolution): what the rules cost a pod's start.
    started = statuses[n.NETRULES_CONTAINER]["state"]["terminated"]["startedAt"]
    print(f"[pods] {n.NETRULES_CONTAINER} ran {_seconds(started, done['finishedAt']):.0f}s")
    for name in ("redirected", "proxied"):
        p = pods.get_json(kube, "pod", name, "-n", agents.namespace)
        ready = next(c for c in p["status"]["conditions"] if c["type"] == "Ready")["lastTransitionTime"]
        print(f"[pods] {name}: created -> Ready {_seconds(p['metadata']['creationTimestamp'], ready):.0f}s")


@pytest.mark.parametrize("client", ["curl", "python-requests", "node-fetch", "git"])
def test_a_client_with_no_proxy_variable_reaches_the_api_through_the_sidecar(
    pods_env: Any, agents: Agents, client: str
) -> None:
    tag = secrets.token_hex(4)
    command = pods.clients(f"https://{pods_env.api_host}/v1/messages", tag)[client]
    check_env = "env | grep -ci proxy || true; "
    result = _run(pods_env, agents, "redirected", check_env + command)
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "0", f"proxy variables left: {result.stdout}"
    assert result.returncode == 0 and lines[-1] == "200", result
    received = _by_client(pods_env, f"{client}-{tag}")
    assert received, f"the stand-in saw no request from {client}"
    credentials = [standin.credential(r) for r in received if standin.credential(r) is not None]
    assert credentials and all(c == agents.redirect.real_key for c in credentials), (client, credentials)
    assert agents.redirect.real_key not in result.stdout + result.stderr


def test_the_same_client_in_the_proxy_pod_goes_around_the_sidecar(pods_env: Any, agents: Agents) -> None:
    """The control: without redirect, the unset variables mean a direct connection, which fails
    here only because the agent does not trust the stand-in's CA (and holds a sealed token)."""
    tag = secrets.token_hex(4)
    command = pods.clients(f"https://{pods_env.api_host}/v1/messages", tag)["curl"]
    result = _run(pods_env, agents, "proxied", command)
    assert result.stdout.strip()[-3:] != "200", result
    assert "certificate" in result.stderr.lower(), result.stderr
    assert not _by_client(pods_env, f"curl-{tag}")


@pytest.mark.parametrize("client", ["curl", "python-requests", "node-fetch"])
def test_a_denied_host_gets_nothing_and_is_audited(pods_env: Any, agents: Agents, client: str) -> None:
    tag = secrets.token_hex(4)
    command = pods.clients(f"https://{pods_env.other_host}/collect", tag)[client]
    result = _run(pods_env, agents, "redirected", command)
    assert result.stdout.strip()[-3:] != "200", result
    time.sleep(1)
    assert not _by_client(pods_env, f"{client}-{tag}")
    assert not [r for r in pods_env.seen() if (r.get("host") or "").startswith(standin.OTHER)]
    logs = pods_env.kube.kubectl("-n", agents.namespace, "logs", "redirected", "-c", n.SIDECAR_CONTAINER).stdout
    audited = [line for line in logs.splitlines() if "TRANSPARENT" in line and pods_env.other_host in line]
    assert audited, "no audit line for the refused transparent connection"


def _targets(pods_env: Any) -> dict[str, tuple[str, int, str]]:
    """Direct destinations: the stand-in's pod IP (by its other name, and with no SNI at all) and
    the other Service's ClusterIP."""
    kube, api_ns = pods_env.kube, pods_env.api_namespace
    pod_ip = pods.get_json(kube, "pod", standin.NAME, "-n", api_ns)["status"]["podIP"]
    service_ip = pods.get_json(kube, "service", standin.OTHER, "-n", api_ns)["spec"]["clusterIP"]
    return {
        "pod IP, other name": (pod_ip, standin.PORT, pods_env.other_host),
        "pod IP, no SNI": (pod_ip, standin.PORT, ""),
        "other Service": (service_ip, 443, pods_env.other_host),
    }


@pytest.mark.parametrize("target", ["pod IP, other name", "pod IP, no SNI", "other Service"])
def test_direct_tls_to_another_pod_or_service_fails_under_redirect_only(
    pods_env: Any, agents: Agents, target: str
) -> None:
    host, port, sni = _targets(pods_env)[target]
    results = {}
    for pod in ("redirected", "proxied"):
        tag = f"direct-{pod}-{secrets.token_hex(4)}"
        out = _json(_run(pods_env, agents, pod, f"python3 -c '{DIRECT_TLS}' {host} {port} '{sni}' {tag}"))
        time.sleep(1)
        results[pod] = (out, _by_client(pods_env, tag))
    out, seen = results["redirected"]
    assert out["ok"] is False and not seen, results
    out, seen = results["proxied"]  # the control: the same connection does reach the stand-in
    assert out["ok"] is True and out["answer"].startswith("HTTP/1.1 200") and len(seen) == 1, results


@pytest.mark.parametrize(("who", "uid"), [("agent uid", 1000), ("root without capabilities", 0)])
def test_the_agent_cannot_flush_the_rules(pods_env: Any, agents: Agents, who: str, uid: int) -> None:
    """A debug container with the sidecar image (it has nft) and the agent's restrictions tries to
    delete the table; then the redirect still holds."""
    kube = pods_env.kube
    name = f"flush-{uid}"
    security = {
        "runAsUser": uid,
        "runAsNonRoot": uid != 0,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    debug = {
        "name": name,
        "image": pods_env.images.sidecar,
        "imagePullPolicy": pods_env.images.pull_policy,
        "command": ["nft", "delete", "table", "inet", "oshu_vault"],
        "securityContext": security,
    }
    patch = json.dumps({"spec": {"ephemeralContainers": [debug]}})
    kube.kubectl(
        "-n", agents.namespace, "patch", "pod", "redirected", "--subresource=ephemeralcontainers",
        "--type=strategic", "-p", patch,
    )  # fmt: skip

    def finished() -> dict[str, Any] | None:
        pod = pods.get_json(kube, "pod", "redirected", "-n", agents.namespace)
        state = _statuses(pod, "ephemeralContainerStatuses").get(name, {}).get("state", {})
        return state.get("terminated")

    done = wait_for(finished, timeout=120, what=f"debug container {name} finished", interval=1)
    logs = kube.kubectl("-n", agents.namespace, "logs", "redirected", "-c", name, check=False)
    assert done["exitCode"] != 0 and "Operation not permitted" in logs.stdout + logs.stderr, (done, logs)
    tag = secrets.token_hex(4)
    command = pods.clients(f"https://{pods_env.api_host}/v1/messages", tag)["curl"]
    assert _run(pods_env, agents, "redirected", command).stdout.strip() == "200"
    assert [standin.credential(r) for r in _by_client(pods_env, f"curl-{tag}")] == [agents.redirect.real_key]


def test_a_debug_container_with_net_admin_is_refused(pods_env: Any, agents: Agents) -> None:
    debug = {
        "name": "netadmin",
        "image": pods_env.images.sidecar,
        "command": ["nft", "flush", "ruleset"],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
        },
    }
    r = pods_env.kube.kubectl(
        "-n", agents.namespace, "patch", "pod", "redirected", "--subresource=ephemeralcontainers",
        "--type=strategic", "-p", json.dumps({"spec": {"ephemeralContainers": [debug]}}), check=False,
    )  # fmt: skip
    assert r.returncode != 0 and "[redirect-capabilities]" in r.stderr, r.stderr


def test_pods_without_enforcement_are_unchanged(pods_env: Any, agents: Agents) -> None:
    pod = pods.get_json(pods_env.kube, "pod", "proxied", "-n", agents.namespace)
    (sidecar,) = pod["spec"]["initContainers"]
    assert sidecar["name"] == n.SIDECAR_CONTAINER
    assert not [a for a in sidecar["args"] if "transparent" in a or "redirect" in a], sidecar["args"]
    record = json.loads(pod["metadata"]["annotations"][n.ANNOTATION_INJECTED])
    assert "enforcement" not in record
    # And with the variables, the proxy pod works as always.
    tag = secrets.token_hex(4)
    command = pods.clients(f"https://{pods_env.api_host}/v1/messages", tag)["curl"]
    result = pods.exec_in(pods_env.kube, agents.namespace, "proxied", command)
    assert result.stdout.strip() == "200", result
    assert [standin.credential(r) for r in _by_client(pods_env, f"curl-{tag}")] == [agents.proxy.real_key]


def test_kubectl_debug_containers_are_held_by_the_rules(pods_env: Any, agents: Agents) -> None:
    """`kubectl debug --profile=restricted` passes admission (the pod-level uid covers it) and its
    direct connections are redirected like the agent's; the legacy profile is refused."""
    kube, ns = pods_env.kube, agents.namespace
    host, port, sni = _targets(pods_env)["other Service"]
    tag = f"debug-{secrets.token_hex(4)}"
    image = f"--image={pods_env.images.agent}"
    refused = kube.kubectl(
        "-n", ns, "debug", "redirected", "--profile=legacy", image, "--container=legacy", "--", "true", check=False
    )
    assert refused.returncode != 0 and "[redirect-uid-switch]" in refused.stderr, refused.stderr
    kube.kubectl(
        "-n", ns, "debug", "redirected", "--profile=restricted", image, "--container=dbg", "--",
        "python3", "-c", DIRECT_TLS, host, str(port), sni, tag,
    )  # fmt: skip

    def finished() -> dict[str, Any] | None:
        pod = pods.get_json(kube, "pod", "redirected", "-n", ns)
        terminated: dict[str, Any] | None = (
            _statuses(pod, "ephemeralContainerStatuses").get("dbg", {}).get("state", {}).get("terminated")
        )
        return terminated

    wait_for(finished, timeout=120, what="debug container dbg finished", interval=1)
    out = _json(kube.kubectl("-n", ns, "logs", "redirected", "-c", "dbg"))
    time.sleep(1)
    assert out["ok"] is False and not _by_client(pods_env, tag), out
