"""Operator tests: helpers on sys.path, the CRD installed once, one real operator per session.

The operator runs as a subprocess (`python -m oshu_operator --dev-webhook`), exactly as
`oshu-operator` runs anywhere; the API server calls its webhook on 127.0.0.1.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # operator_clients, operator_kube (importlib mode)
