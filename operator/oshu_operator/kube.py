"""The few Kubernetes API calls the operator makes itself (kopf does the watching).

kubernetes-asyncio keeps every call on the event loop that also serves admission
requests: no thread pool, no blocking the webhook while a Secret is read.
Objects come back as plain dicts so the rest of the code needs no client models.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from .names import GROUP, PLURAL, VERSION

#: The REST client logs whole response bodies (Secret data included) at DEBUG. Never let it.
logging.getLogger("kubernetes_asyncio").setLevel(logging.INFO)
logging.getLogger("kubernetes_asyncio.client.rest").setLevel(logging.WARNING)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ and os.path.exists(SERVICE_ACCOUNT_TOKEN)


async def new_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An API client from an explicit kubeconfig, else in-cluster credentials, else $KUBECONFIG/~/.kube/config."""
    cfg = client.Configuration()
    if kubeconfig is None and in_cluster():
        config.load_incluster_config(client_configuration=cfg)
    else:
        await config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=cfg, persist_config=False
        )
    cfg.connection_pool_maxsize = 16  # bounded: reconciles are bounded too (config.max_concurrent_reconciles)
    return client.ApiClient(configuration=cfg)


def is_status(e: BaseException, *codes: int) -> bool:
    return isinstance(e, ApiException) and e.status in codes


class Kube:
    """Typed-enough wrappers: return dicts, None on 404, raise ApiException otherwise."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.admission = client.AdmissionregistrationV1Api(api)

    def _dict(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    async def close(self) -> None:
        await self.api.close()

    async def api_resources(self, group: str, version: str) -> set[str]:
        """Resource names served under group/version (discovery); empty if the group is unknown."""
        resp = await self.api.call_api(
            f"/apis/{group}/{version}", "GET", auth_settings=["BearerToken"], _preload_content=False
        )
        try:
            if resp.status == 404:
                return set()
            if not 200 <= resp.status <= 299:
                raise ApiException(status=resp.status, reason=resp.reason)
            return {r["name"] for r in (await resp.json()).get("resources", [])}
        finally:
            resp.release()

    # --- VaultSessions -------------------------------------------------------------------
    async def get_session(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def patch_session_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE_PATCH
        )

    # --- Secrets --------------------------------------------------------------------------
    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        # Raw JSON: session Secrets are ~300 KiB (the CA bundle); skipping the client's model
        # round trip saves two copies per read.
        resp = await self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        try:
            if resp.status == 404:
                return None
            if not 200 <= resp.status <= 299:
                raise ApiException(status=resp.status, reason=resp.reason)
            return await resp.json()
        finally:
            resp.release()

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._dict(await self.core.create_namespaced_secret(namespace, body))

    async def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._dict(await self.core.replace_namespaced_secret(name, namespace, body))

    async def delete_secret(self, namespace: str, name: str) -> bool:
        try:
            await self.core.delete_namespaced_secret(name, namespace)
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    # --- Webhook configuration ------------------------------------------------------------
    async def get_mutating_webhook(self, name: str) -> dict[str, Any] | None:
        try:
            return self._dict(await self.admission.read_mutating_webhook_configuration(name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def create_mutating_webhook(self, body: dict[str, Any]) -> None:
        await self.admission.create_mutating_webhook_configuration(body)

    async def merge_patch_mutating_webhook(self, name: str, patch: dict[str, Any]) -> None:
        await self.admission.patch_mutating_webhook_configuration(name, patch, _content_type=MERGE_PATCH)

    async def delete_mutating_webhook(self, name: str) -> None:
        try:
            await self.admission.delete_mutating_webhook_configuration(name)
        except ApiException as e:
            if e.status != 404:
                raise

    async def patch_mutating_webhook(self, name: str, ops: list[dict[str, Any]]) -> None:
        await self.admission.patch_mutating_webhook_configuration(name, ops, _content_type=JSON_PATCH)
