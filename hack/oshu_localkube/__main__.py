"""``python -m oshu_localkube``: same as the ``oshu-local-cluster`` command."""

import sys

from .cli import main

sys.exit(main())
