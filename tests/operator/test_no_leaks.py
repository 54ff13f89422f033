"""No real secret value in any Pod, VaultSession (spec or status), Event, webhook configuration,
operator log (at DEBUG) or metrics: only the session Secret ever holds one.

Runs after every other operator test (see conftest) and scans for all the real values they
used, after a scenario of its own that touches every path: missing key, ready, pods, a
refusal that names the real Secret, rotation, expiry, deletion.
"""

from __future__ import annotations

import base64
import json

import pytest

from oshu_operator import names as n
from oshu_testkit.kube import pod, wait_for

pytestmark = pytest.mark.leak_scan


def test_no_real_value_outside_the_session_secret(kube, ns, real, real_values, operator):
    value, rotated = real(), real()
    ref = [
        {
            "name": "ANTHROPIC_API_KEY",
            "secretKeyRef": {"name": "anthropic", "key": "api-key"},
            "hosts": ["api.anthropic.com"],
        }
    ]
    kube.session(ns, "claude", ref)
    kube.wait_phase(ns, "claude", n.PHASE_PENDING)
    kube.secret(ns, "anthropic", {"api-key": value})
    kube.wait_phase(ns, "claude", n.PHASE_READY)
    assert kube.create(pod("agent", "claude"), "-n", ns).ok
    refused = kube.create(
        pod("thief", "claude", [{"name": "a", "image": "a", "envFrom": [{"secretRef": {"name": "anthropic"}}]}]),
        "-n",
        ns,
    )
    assert not refused.ok
    kube.secret(ns, "anthropic", {"api-key": rotated})
    wait_for(lambda: rotated.encode() in kube.session_secret(ns, "claude")[n.KEY_SESSION_FILE], 15, "rotation")
    kube.session(ns, "short", ref, ttl="2s")
    kube.wait_phase(ns, "short", n.PHASE_EXPIRED, timeout=20)
    kube.delete(n.PLURAL, "claude", ns)
    wait_for(lambda: kube.get(n.PLURAL, "claude", ns) is None, 30, "deletion")

    # The positive control: the values really are in the cluster, where they belong.
    assert base64.b64encode(rotated.encode()).decode() in json.dumps(kube.get("secret", "anthropic", ns))

    places = {
        "pods": json.dumps(kube.list("pods")),
        "vaultsessions": json.dumps(kube.list(n.PLURAL)),
        "events": json.dumps(kube.list("events")),
        "webhook configurations": json.dumps(kube.list("mutatingwebhookconfigurations")),
        "operator log": operator.log_text(),
        "operator metrics": operator.metrics_text(),
        "refusal message": refused.error,
    }
    assert len(real_values) >= 2 and "Handler" in places["operator log"]  # the scan has something to find in
    leaks = [
        (where, v[:10] + "...")
        for where, text in places.items()
        for v in real_values
        if v in text or base64.b64encode(v.encode()).decode() in text
    ]
    assert leaks == []
