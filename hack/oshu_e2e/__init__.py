"""End-to-end helpers for the install artefacts: render the Helm chart and manifests/install.yaml,
act as the chart's ServiceAccount, run the operator locally with the chart's own arguments, and
the demo (`python hack/demo.py`). Shared by tests/chart and the demo; see docs/install.md."""
