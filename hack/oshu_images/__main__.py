"""``python -m oshu_images``: build, list, import or push the images (see docs/install.md)."""

import sys

from .cli import main

sys.exit(main())
