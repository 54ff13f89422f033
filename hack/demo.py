#!/usr/bin/env python3
"""`make demo`: the whole oshu-vault flow on a local control plane (see hack/oshu_e2e/demo.py)."""

import sys
from pathlib import Path

# Run from a checkout even if the venv's editable install predates hack/oshu_e2e.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from oshu_e2e.demo import main

if __name__ == "__main__":
    sys.exit(main())
