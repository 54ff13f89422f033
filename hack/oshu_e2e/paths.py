"""Where the install artefacts live in the repository."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "oshu-vault"
CRD_FILE = CHART_DIR / "crds" / "vaultsessions.vault.oshu.dev.yaml"
MANIFESTS_DIR = REPO_ROOT / "manifests"
INSTALL_YAML = MANIFESTS_DIR / "install.yaml"
EXAMPLES_DIR = MANIFESTS_DIR / "examples"
