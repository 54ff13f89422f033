"""Names shared by the operator, the injected pods, the chart, the demo and the tests.

One home for every label, annotation, env var, volume and path name, so the webhook,
the reconciler and the docs cannot drift apart. YAML (chart, manifests) cannot import
this module; tests check that the YAML agrees with it.
"""

from __future__ import annotations

GROUP = "vault.oshu.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "VaultSession"
PLURAL = "vaultsessions"
SINGULAR = "vaultsession"
SHORT_NAMES = ("vsess",)  # "vs" is Istio's VirtualService

# --- Pod opt-in -------------------------------------------------------------------------
#: Label that opts a pod in and names its VaultSession. The webhook configuration's
#: matchConditions (CEL, evaluated by the API server) send only pods carrying it or the
#: annotation below, so unrelated pods never reach the operator.
LABEL_SESSION = f"{GROUP}/session"
#: The same key as an annotation opts in just the same; when both are set they must agree.
ANNOTATION_SESSION = f"{GROUP}/session"
#: Optional comma-separated list of app containers to inject (default: all).
ANNOTATION_CONTAINERS = f"{GROUP}/containers"
#: Written by the webhook: a JSON record of what was injected.
ANNOTATION_INJECTED = f"{GROUP}/injected"

# --- Objects the operator owns ---------------------------------------------------------------
SESSION_SECRET_PREFIX = "oshu-vault-session-"


def session_secret_name(session: str) -> str:
    """The session Secret of VaultSession `session`: the one place its name is built."""
    return SESSION_SECRET_PREFIX + session


#: Keys inside the session Secret.
KEY_SESSION_FILE = "session.json"
KEY_CA_CERT = "ca.crt"
KEY_CA_KEY = "ca.key"
KEY_CA_BUNDLE = "ca-bundle.pem"
#: Present only when the operator runs with --sidecar-upstream-ca-file: extra CAs the sidecar
#: trusts for upstream APIs (a private API's CA). In the session Secret, so only the sidecar
#: sees it (the app containers' CA volume projects ca.crt and ca-bundle.pem alone).
KEY_UPSTREAM_CA = "upstream-ca.pem"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "oshu-vault-operator"
LABEL_SESSION_OWNER = f"{GROUP}/owner-session"
#: Annotation on the session Secret: when it was revoked (deletion waits out the grace period).
ANNOTATION_REVOKED_AT = f"{GROUP}/revoked-at"
FINALIZER = f"{GROUP}/revoke"

# --- What the webhook injects -------------------------------------------------------------
SIDECAR_CONTAINER = "oshu-vault-proxy"
VOLUME_SESSION = "oshu-vault-session"  # sidecar only: session file + CA key
VOLUME_CA = "oshu-vault-ca"  # app containers: CA cert + bundle only
SESSION_MOUNT_DIR = "/var/run/oshu-vault/session"
CA_MOUNT_DIR = "/var/run/oshu-vault/ca"
CA_CERT_PATH = f"{CA_MOUNT_DIR}/{KEY_CA_CERT}"
CA_BUNDLE_PATH = f"{CA_MOUNT_DIR}/{KEY_CA_BUNDLE}"

#: Env vars pointing at the combined bundle (Mozilla roots + session CA): these
#: variables replace the client's default roots rather than adding to them.
ENV_CA_BUNDLE_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE")
#: Node adds this CA to its built-in roots.
ENV_NODE_EXTRA_CA = "NODE_EXTRA_CA_CERTS"
#: Node's built-in fetch ignores proxy variables unless this is set.
ENV_NODE_USE_ENV_PROXY = "NODE_USE_ENV_PROXY"
#: aiohttp (and urllib's getproxies) look WebSocket URLs up as WS_PROXY/WSS_PROXY, not HTTP(S)_PROXY.
ENV_PROXY_VARS = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "WS_PROXY",
    "WSS_PROXY",
    "ws_proxy",
    "wss_proxy",
)
ENV_NO_PROXY_VARS = ("NO_PROXY", "no_proxy")

# --- The injected sidecar's command line ---------------------------------------------------
#: Default proxy port (`--sidecar-proxy-port`). The proxy listens on loopback only: no
#: other pod may use this pod's keys.
SIDECAR_PROXY_PORT = 15080
#: Default admin port (`--sidecar-admin-port`): health (/readyz) and metrics only. Bound on
#: all interfaces in injected pods because kubelet probes come from the node, not from
#: inside the pod's network namespace.
SIDECAR_ADMIN_PORT = 15090
#: Ports the injected sidecar may be given: it runs as non-root with every capability
#: dropped, so it cannot bind a privileged port.
SIDECAR_PORT_RANGE = (1024, 65535)
#: The sidecar's own --log-level choices.
SIDECAR_LOG_LEVELS = ("debug", "info", "warning", "error")
SIDECAR_ADMIN_PORT_NAME = "oshu-admin"
SIDECAR_READY_PATH = "/readyz"
#: Non-root UID/GID the sidecar runs as (distroless "nonroot"); the image uses the same.
SIDECAR_UID = 65532

# --- Enforcement: how agent traffic reaches the proxy (VaultSession spec.enforcement) -------------
#: `proxy`: through the injected proxy variables only. `redirect`: also by redirect rules in the
#: pod's network namespace, so a client that ignores the variables cannot go around the proxy.
ENFORCEMENT_PROXY = "proxy"
ENFORCEMENT_REDIRECT = "redirect"
ENFORCEMENTS = (ENFORCEMENT_PROXY, ENFORCEMENT_REDIRECT)
#: Loopback port of the sidecar's transparent listener (redirected connections arrive here).
#: Mirrors oshu_sidecar.config.TRANSPARENT_PORT (a test ties them).
SIDECAR_TRANSPARENT_PORT = 15001
#: Init container installing the redirect rules; runs first, as root with NET_ADMIN and NET_RAW only.
NETRULES_CONTAINER = "oshu-vault-netrules"
#: Its command, a console script of the sidecar image.
NETRULES_COMMAND = "oshu-vault-netrules"
#: Capabilities no other container may add under redirect: they could change or bypass the rules.
REDIRECT_FORBIDDEN_CAPABILITIES = ("ALL", "NET_ADMIN", "NET_RAW", "SYS_ADMIN")
SESSION_FILE_PATH = f"{SESSION_MOUNT_DIR}/{KEY_SESSION_FILE}"
SESSION_CA_CERT_PATH = f"{SESSION_MOUNT_DIR}/{KEY_CA_CERT}"
SESSION_CA_KEY_PATH = f"{SESSION_MOUNT_DIR}/{KEY_CA_KEY}"
SESSION_UPSTREAM_CA_PATH = f"{SESSION_MOUNT_DIR}/{KEY_UPSTREAM_CA}"
#: Writable scratch space for the sidecar (read-only root filesystem).
VOLUME_TMP = "oshu-vault-tmp"
TMP_MOUNT_DIR = "/tmp"

# --- Admission ----------------------------------------------------------------------------
#: Namespaces the webhook never touches, whatever the selectors say.
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
#: Webhook entry name inside the MutatingWebhookConfiguration (must be a DNS name).
WEBHOOK_NAME = f"inject.pods.{GROUP}"
#: kopf handler id == URL path of the injection endpoint.
WEBHOOK_HANDLER_ID = "inject"
WEBHOOK_PATH = f"/{WEBHOOK_HANDLER_ID}"
#: The ephemeral-container check (pods/ephemeralcontainers): entry name, kopf handler id, path.
EPHEMERAL_WEBHOOK_NAME = f"ephemeral.pods.{GROUP}"
EPHEMERAL_HANDLER_ID = "ephemeral"
EPHEMERAL_PATH = f"/{EPHEMERAL_HANDLER_ID}"
#: Seconds the API server waits for either webhook (the chart's default too).
WEBHOOK_TIMEOUT_SECONDS = 10
#: kopf handler id of the VaultSession deletion (revocation) handler.
REVOKE_HANDLER_ID = "revoke"
#: Name of the configuration the operator registers itself in --dev-webhook mode.
DEV_WEBHOOK_CONFIG = "oshu-vault-dev"

# --- Status / events ----------------------------------------------------------------------
CONDITION_READY = "Ready"
PHASE_READY = "Ready"
PHASE_PENDING = "Pending"  # a referenced Secret or key is missing or unusable
PHASE_INVALID = "Invalid"  # the spec cannot be turned into a session
PHASE_EXPIRED = "Expired"
PHASES = (PHASE_READY, PHASE_PENDING, PHASE_INVALID, PHASE_EXPIRED)
#: reportingComponent of the Events the operator posts.
EVENT_COMPONENT = "oshu-vault-operator"

#: Env names the injection sets itself: a VaultSession secret may not use them (CRD CEL + reconciler).
RESERVED_ENV_NAMES = (
    *ENV_PROXY_VARS,
    *ENV_NO_PROXY_VARS,
    *ENV_CA_BUNDLE_VARS,
    ENV_NODE_EXTRA_CA,
    ENV_NODE_USE_ENV_PROXY,
)
#: Type of the session Secret: tells it apart from user Secrets at a glance.
SESSION_SECRET_TYPE = f"{GROUP}/session"

# --- Credential kinds (spec.secrets[].kind): what the agent gets ------------------------------
#: aws: the keys of the referenced Secret (secretRef), and the variables the agent gets (sealed).
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"
#: oauth2: the keys of the referenced Secret (secretRef); client_secret and refresh_token optional.
OAUTH2_CLIENT_ID_KEY = "client_id"
OAUTH2_CLIENT_SECRET_KEY = "client_secret"
OAUTH2_REFRESH_TOKEN_KEY = "refresh_token"
#: gcpServiceAccount: google-auth's variable naming the service-account file.
ENV_GOOGLE_CREDENTIALS = "GOOGLE_APPLICATION_CREDENTIALS"
#: gcpServiceAccount: the session Secret key of the agent's service-account JSON (throwaway key,
#: sealed key id), projected into the app containers' CA volume next to ca.crt.
AGENT_FILE_PREFIX = "agent-"


def agent_file_key(secret: str) -> str:
    """The session Secret key (and file name in the CA volume) of a gcpServiceAccount entry's JSON."""
    return f"{AGENT_FILE_PREFIX}{secret}.json"


def agent_file_path(secret: str) -> str:
    return f"{CA_MOUNT_DIR}/{agent_file_key(secret)}"
