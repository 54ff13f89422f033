"""Secrets that are not a static header: the request shapes for `create_session` and what comes back.

A static secret is a string (or `{"value", "hosts", "locations"}`). The other kinds carry their
real material in `fields`; the gateway answers, per secret, the sealed stand-ins as an `env`
map (what the sandbox sets) and, for a Google service account, the agent's key file whose
private key is a throwaway the gateway made for this session (docs/gateway.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KIND_AWS",
    "KIND_GCP",
    "KIND_OAUTH2",
    "KIND_STATIC",
    "SecretCredentials",
    "aws_secret",
    "gcp_service_account_secret",
    "oauth2_secret",
]

KIND_STATIC = "static"
KIND_AWS = "aws"
KIND_OAUTH2 = "oauth2"
KIND_GCP = "gcpServiceAccount"


def aws_secret(
    access_key_id: str,
    secret_access_key: str,
    hosts: Sequence[str],
    session_token: str | None = None,
) -> dict[str, Any]:
    """An AWS key pair (SigV4 re-signed by the gateway) for `hosts`, e.g. `bedrock-runtime.us-east-1.amazonaws.com`."""
    fields = {"accessKeyId": access_key_id, "secretAccessKey": secret_access_key}
    if session_token:
        fields["sessionToken"] = session_token
    return {"kind": KIND_AWS, "fields": fields, "hosts": list(hosts)}


def oauth2_secret(
    token_url: str,
    client_id: str,
    hosts: Sequence[str],
    *,
    client_secret: str | None = None,
    refresh_token: str | None = None,
    scope: str | None = None,
    audience: str | None = None,
    client_auth: str | None = None,
) -> dict[str, Any]:
    """An OAuth2 client (client credentials, or a refresh token): the gateway fetches and refreshes the
    access token and sends it to `hosts`; the sandbox holds a sealed bearer token."""
    fields = {"tokenUrl": token_url, "clientId": client_id}
    for key, value in (
        ("clientSecret", client_secret),
        ("refreshToken", refresh_token),
        ("scope", scope),
        ("audience", audience),
        ("clientAuth", client_auth),
    ):
        if value is not None:
            fields[key] = value
    return {"kind": KIND_OAUTH2, "fields": fields, "hosts": list(hosts)}


def gcp_service_account_secret(
    key_file: str | os.PathLike[str] | Mapping[str, Any], hosts: Sequence[str]
) -> dict[str, Any]:
    """A Google service-account key (the JSON file Google gives you, a path or the parsed object) for `hosts`,
    e.g. `us-east5-aiplatform.googleapis.com`."""
    if isinstance(key_file, Mapping):
        doc = dict(key_file)
    else:
        with open(key_file) as f:
            doc = json.load(f)
    return {"kind": KIND_GCP, "fields": doc, "hosts": list(hosts)}


@dataclass(frozen=True)
class SecretCredentials:
    """What the sandbox gets for one secret: never real material.

    `env`: variables to set. `agent_json` (Google service accounts only): the key file the sandbox
    must write (its private key is a per-session throwaway); `agent_json_env` names the variables
    that must hold that file's path (GOOGLE_APPLICATION_CREDENTIALS and the secret's name).
    """

    name: str
    kind: str
    sealed: str = field(repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    agent_json: dict[str, Any] | None = field(default=None, repr=False)
    agent_json_env: tuple[str, ...] = ()

    @classmethod
    def from_response(cls, name: str, doc: Mapping[str, Any]) -> SecretCredentials:
        agent = doc.get("agent_json")
        return cls(
            name=name,
            kind=str(doc.get("kind", KIND_STATIC)),
            sealed=str(doc["sealed"]),
            env={str(k): str(v) for k, v in (doc.get("env") or {}).items()},
            agent_json=dict(agent) if isinstance(agent, Mapping) else None,
            agent_json_env=tuple(str(v) for v in doc.get("agent_json_env") or ()),
        )

    @property
    def agent_file_name(self) -> str:
        """The file name the agent JSON is written under (as the Kubernetes webhook names it)."""
        return f"agent-{self.name}.json"
