"""Client of oshu-gateway's session API (stdlib only): sessions, their sandbox environment, the CA.

Field names follow the seed SDK (snake_case): `session_id`, `token`, `sealed_secrets`,
`proxy_url`, `expires_at`. Secrets of other kinds (AWS, OAuth2, Google service accounts) are
built with `aws_secret`, `oauth2_secret`, `gcp_service_account_secret`; `Session.secrets` holds
what the sandbox gets for each, and `sandbox_env()` / `sandbox_files()` put it together.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .credentials import (
    KIND_AWS,
    KIND_GCP,
    KIND_OAUTH2,
    KIND_STATIC,
    SecretCredentials,
    aws_secret,
    gcp_service_account_secret,
    oauth2_secret,
)

__all__ = [
    "CA_ENV_VARS",
    "DEFAULT_CREDENTIALS_DIR",
    "KIND_AWS",
    "KIND_GCP",
    "KIND_OAUTH2",
    "KIND_STATIC",
    "AsyncSecretsProxyClient",
    "SecretCredentials",
    "SecretsProxyClient",
    "SecretsProxyError",
    "Session",
    "aws_secret",
    "gcp_service_account_secret",
    "oauth2_secret",
]

#: The CA variables a sandbox needs so curl, Python, git, AWS tools and Node trust the gateway CA
#: (the same list the Kubernetes webhook injects).
CA_ENV_VARS = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
)
DEFAULT_NO_PROXY = "localhost,127.0.0.1,::1"
#: Where `sandbox_files()` places agent key files by default (inside the sandbox).
DEFAULT_CREDENTIALS_DIR = "/tmp/oshu-vault"
SecretSpec = str | Mapping[str, Any]


class SecretsProxyError(Exception):
    """An API error: HTTP status, the server's error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Session:
    """A created session. Use as a context manager to delete it on exit."""

    session_id: str
    token: str = field(repr=False)
    sealed_secrets: dict[str, str]
    proxy_url: str = field(repr=False)
    expires_at: str
    ca_url: str = ""
    _client: SecretsProxyClient | None = field(default=None, repr=False, compare=False)
    secrets: dict[str, SecretCredentials] = field(default_factory=dict, repr=False)

    def sandbox_env(
        self,
        ca_path: str = "/tmp/oshu-vault-ca.pem",
        no_proxy: str = DEFAULT_NO_PROXY,
        credentials_dir: str = DEFAULT_CREDENTIALS_DIR,
    ) -> dict[str, str]:
        """The environment a sandbox needs: sealed values, proxy variables (both cases), NO_PROXY, CA variables.

        `ca_path` is where the sandbox will find a PEM bundle that trusts the gateway CA
        (write `client.ca_bundle_pem()` there: the gateway CA plus this machine's roots, since
        SSL_CERT_FILE replaces the default roots for most clients). Each secret contributes its
        `env` (an AWS key: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN); a Google
        service account points GOOGLE_APPLICATION_CREDENTIALS and its name at its file under
        `credentials_dir` (write `sandbox_files(credentials_dir)` there).
        """
        env = self._secret_env(credentials_dir)
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            env[name] = self.proxy_url
        env["NO_PROXY"] = env["no_proxy"] = no_proxy
        for name in CA_ENV_VARS:
            env[name] = ca_path
        if self.proxy_url.startswith("https://"):
            env["GIT_PROXY_SSL_CAINFO"] = ca_path  # git verifies an https:// proxy with its own setting
        return env

    def _secret_env(self, credentials_dir: str) -> dict[str, str]:
        if not self.secrets:  # a gateway that answers sealed_secrets only
            return dict(self.sealed_secrets)
        env: dict[str, str] = {}
        for cred in self.secrets.values():
            env.update(cred.env)
            for name in cred.agent_json_env:
                env[name] = os.path.join(credentials_dir, cred.agent_file_name)
        return env

    def sandbox_files(self, credentials_dir: str = DEFAULT_CREDENTIALS_DIR) -> dict[str, str]:
        """Path -> content of the files the sandbox must hold (Google agent key files; no real key inside)."""
        return {
            os.path.join(credentials_dir, c.agent_file_name): json.dumps(c.agent_json, indent=2) + "\n"
            for c in self.secrets.values()
            if c.agent_json is not None
        }

    def delete(self) -> None:
        if self._client is not None:
            self._client.delete_session(self.session_id)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.delete()
        except SecretsProxyError as e:
            if e.status != 404:
                raise


class SecretsProxyClient:
    """Synchronous client. `base_url`/`api_key` default to PROXY_BASE_URL / SECRETS_PROXY_API_KEY."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        base = base_url or os.environ.get("PROXY_BASE_URL")
        key = api_key or os.environ.get("SECRETS_PROXY_API_KEY")
        if not base:
            raise ValueError("base_url (or PROXY_BASE_URL) is required")
        if not key:
            raise ValueError("api_key (or SECRETS_PROXY_API_KEY) is required")
        self.base_url = base.rstrip("/")
        self.api_key = key
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),  # the API is never reached through a proxy from the environment
            urllib.request.HTTPSHandler(context=self._ssl),
        )

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, auth: bool = True) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)["error"]
                code, message = str(err["code"]), str(err["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", raw[:200].decode("utf-8", "replace")
            raise SecretsProxyError(e.code, code, message) from None

    def create_session(
        self,
        secrets: Mapping[str, SecretSpec],
        *,
        secret_hosts: list[str] | None = None,
        allowed_egress: list[str] | None = None,
        ttl_seconds: float | None = None,
        idle_ttl_seconds: float | None = None,
    ) -> Session:
        body: dict[str, Any] = {"secrets": dict(secrets)}
        for k, v in (
            ("secret_hosts", secret_hosts),
            ("allowed_egress", allowed_egress),
            ("ttl_seconds", ttl_seconds),
            ("idle_ttl_seconds", idle_ttl_seconds),
        ):
            if v is not None:
                body[k] = v
        _, raw = self._call("POST", "/v1/sessions", body)
        doc = json.loads(raw)
        return Session(
            doc["session_id"],
            doc["token"],
            doc["sealed_secrets"],
            doc["proxy_url"],
            doc["expires_at"],
            doc.get("ca_url", ""),
            self,
            {name: SecretCredentials.from_response(name, c) for name, c in (doc.get("secrets") or {}).items()},
        )

    def get_session(self, session_id: str) -> dict[str, Any]:
        _, raw = self._call("GET", f"/v1/sessions/{session_id}")
        out: dict[str, Any] = json.loads(raw)
        return out

    def delete_session(self, session_id: str) -> None:
        self._call("DELETE", f"/v1/sessions/{session_id}")

    def ca_pem(self) -> str:
        _, raw = self._call("GET", "/v1/ca.pem", auth=False)
        return raw.decode()

    def ca_bundle_pem(self) -> str:
        """The gateway CA followed by this machine's default roots (for SSL_CERT_FILE in a sandbox)."""
        bundle = self.ca_pem()
        cafile = ssl.get_default_verify_paths().cafile
        if cafile and os.path.exists(cafile):
            with open(cafile) as f:
                bundle = bundle.rstrip("\n") + "\n" + f.read()
        return bundle


class AsyncSecretsProxyClient:
    """The asyncio twin: the same methods as coroutines (each call runs in a worker thread)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._sync = SecretsProxyClient(base_url, api_key, ca_file=ca_file, timeout=timeout)

    async def create_session(self, secrets: Mapping[str, SecretSpec], **kw: Any) -> AsyncSession:
        s = await asyncio.to_thread(self._sync.create_session, secrets, **kw)
        return AsyncSession(s)

    async def get_session(self, session_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._sync.get_session, session_id)

    async def delete_session(self, session_id: str) -> None:
        await asyncio.to_thread(self._sync.delete_session, session_id)

    async def ca_pem(self) -> str:
        return await asyncio.to_thread(self._sync.ca_pem)

    async def ca_bundle_pem(self) -> str:
        return await asyncio.to_thread(self._sync.ca_bundle_pem)


class AsyncSession:
    """A `Session` usable with `async with` (deleted on exit)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.session.__exit__, None, None, None)
