"""manifests/examples: the Secret, VaultSession and opted-in Pod users start from."""

from __future__ import annotations

import copy

import yaml

from .chart import Doc
from .paths import EXAMPLES_DIR

NAMESPACE = "agents"


def load(namespace: str | None = None) -> dict[str, Doc]:
    """The example objects by kind (Namespace, Secret, VaultSession, Pod), optionally moved to
    another namespace (then without the Namespace object)."""
    out: dict[str, Doc] = {}
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[doc["kind"]] = doc
    if namespace is not None and namespace != NAMESPACE:
        out.pop("Namespace", None)
        out = {kind: copy.deepcopy(doc) for kind, doc in out.items()}
        for doc in out.values():
            doc["metadata"]["namespace"] = namespace
    return out


def real_key(examples: dict[str, Doc], key: str = "api-key") -> str:
    return examples["Secret"]["stringData"][key]
