"""Console scripts: the one part of the package metadata that depends on the source tree.

The images build from pyproject.toml, setup.py, contract/, sidecar/ and operator/ only (.dockerignore),
so their wheel holds oshu_contract, oshu_sidecar and oshu_operator and must not install a command for the
local control plane, whose package (hack/oshu_localkube) is not in it. A checkout has hack/:
`pip install -e '.[test]'` gets all three commands and the dev packages (oshu_localkube,
oshu_e2e). Everything else is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup

SCRIPTS = {
    "oshu-sidecar": "oshu_sidecar.__main__:main",
    # the init container of `enforcement: redirect` (same image as the sidecar)
    "oshu-vault-netrules": "oshu_sidecar.netrules:main",
    "oshu-operator": "oshu_operator.cli:main",
}
#: Development only: present when hack/ is (a checkout), absent from the images.
DEV_SCRIPTS = {
    "oshu-local-cluster": "oshu_localkube.cli:main",
}

#: The gateway (gateway/oshu_gateway): present when its sources are (a checkout; the sidecar and
#: operator images do not copy gateway/, so their wheels get no command for a missing module).
GATEWAY_SCRIPTS = {
    "oshu-gateway": "oshu_gateway.__main__:main",
}

here = Path(__file__).resolve().parent
scripts = SCRIPTS | (DEV_SCRIPTS if (here / "hack" / "oshu_localkube").is_dir() else {})
scripts |= GATEWAY_SCRIPTS if (here / "gateway" / "oshu_gateway").is_dir() else {}
setup(entry_points={"console_scripts": [f"{name} = {target}" for name, target in scripts.items()]})
