"""Render the chart with the pinned helm and read what it renders.

The tests and the demo take the operator's command line from the rendered Deployment, so the
locally run operator gets exactly the arguments the chart gives it in a cluster.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .paths import CHART_DIR

Doc = dict[str, Any]


class RenderError(RuntimeError):
    """helm template failed; the message carries helm's stderr (e.g. a values.schema.json error)."""


def template(
    helm: Path | str,
    *,
    release: str,
    namespace: str,
    values: Mapping[str, Any] | None = None,
    set_values: Sequence[str] = (),
    extra: Sequence[str] = (),
    chart: Path = CHART_DIR,
) -> str:
    """`helm template` output as text (no cluster needed)."""
    command = [str(helm), "template", release, str(chart), "--namespace", namespace, *extra]
    if values:
        command += ["--values", "-"]
    for item in set_values:
        command += ["--set", item]
    proc = subprocess.run(
        command, input=json.dumps(values) if values else None, capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    return proc.stdout


def documents(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: Iterable[Doc], kind: str, name: str | None = None) -> Doc:
    for doc in docs:
        if doc.get("kind") == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    raise LookupError(f"no {kind}{' ' + name if name else ''} in the rendered chart")


def find_all(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc.get("kind") == kind]


def operator_container(docs: Iterable[Doc]) -> Doc:
    deployment = find(docs, "Deployment")
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator"]
    return container


#: What differs when the chart's operator runs on this machine instead of in its pod: it
#: listens on loopback only (any free port), and is told where the cluster is.
LOCAL_OVERRIDES = {"--webhook-listen": "127.0.0.1:0", "--metrics-listen": "127.0.0.1:0"}


def local_operator_args(docs: Iterable[Doc], kubeconfig: Path | str) -> list[str]:
    """The rendered Deployment's operator arguments, with the listeners moved to loopback."""
    out = []
    for arg in operator_container(docs)["args"]:
        flag, sep, _ = arg.partition("=")
        out.append(f"{flag}={LOCAL_OVERRIDES[flag]}" if sep and flag in LOCAL_OVERRIDES else arg)
    return [*out, f"--kubeconfig={kubeconfig}"]


def webhook_config_name(docs: Iterable[Doc]) -> str:
    return find(docs, "MutatingWebhookConfiguration")["metadata"]["name"]


def service_account(docs: Iterable[Doc]) -> tuple[str, str]:
    """(namespace, name) of the operator's ServiceAccount."""
    spec = find(docs, "Deployment")["spec"]["template"]["spec"]
    return find(docs, "Deployment")["metadata"]["namespace"], spec["serviceAccountName"]
