"""Leak scans: a real secret value must appear in no log, metric or response a test can read."""

from __future__ import annotations

from urllib.parse import quote

from .sidecar_process import SidecarProcess


def secret_forms(values: list[str]) -> list[str]:
    """Every form in which a real value could leak into text: raw and percent-encoded."""
    out = []
    for v in values:
        out += [v, quote(v, safe=""), quote(v)]
    return sorted(set(out))


def assert_no_secret(texts: dict[str, str | bytes], values: list[str]) -> None:
    for where, text in texts.items():
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        for form in secret_forms(values):
            assert form not in text, f"a real secret value appears in {where}"


def scan_sidecar(sc: SidecarProcess, values: list[str]) -> None:
    texts: dict[str, str | bytes] = {"sidecar log": sc.log_text()}
    if sc.proc is not None and sc.returncode is None and sc.admin is not None:
        texts["metrics"] = sc.metrics_text()
    assert_no_secret(texts, values)
