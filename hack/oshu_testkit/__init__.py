"""The test kit: real upstreams, the real sidecar and operator as processes, real clients.

Development and tests only: it lives under hack/, is not in the product wheel or the images,
and no product module imports it (an import-linter contract in pyproject.toml checks that).
pytest loads `oshu_testkit.plugin` (tests/conftest.py); tests import the modules directly:

- `sessions`: fresh sealed tokens and sessions; session files laid out like a mounted Secret.
- `ca`: a throwaway CA for the upstreams' TLS.
- `upstreams`: a local HTTPS/HTTP upstream recording every request; the test host names.
- `sidecar_process`, `operator_process`: `python -m oshu_sidecar` / `python -m oshu_operator`
  as subprocesses, with their logs, metrics and files.
- `processes`: how a child process is stopped.
- `clientenv`: the env a client gets, derived from what the webhook injects.
- `clients`, `client_matrix`, `pyclient`, `js/`: real clients (curl, requests, httpx, aiohttp, Node).
- `rawclient`: a raw socket client for protocol-level tests.
- `leaks`: scans for real secret values in logs and metrics.
- `kube`: kubectl helpers over the local control plane for the operator tests.
"""
