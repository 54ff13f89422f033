"""`oshu-operator`: run the VaultSession operator and its pod-injection webhook against any cluster.

Every option can also come from an environment variable (OSHU_ + the option in upper
snake case, e.g. OSHU_SIDECAR_IMAGE); the command line wins. The flags themselves are
in flags.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence

from .config import OperatorConfig, SidecarConfig, revocation_grace_problem
from .flags import build_parser
from .names import SIDECAR_TRANSPARENT_PORT

__all__ = ["build_parser", "config_from_args", "main", "run"]

log = logging.getLogger("oshu_operator")


def _check_env_choices(args: argparse.Namespace) -> None:
    """argparse checks `choices` on the command line only, not on defaults (our OSHU_* values)."""
    for action in build_parser()._actions:
        value = getattr(args, action.dest, None)
        if action.choices is not None and value is not None and value not in action.choices:
            env = "OSHU_" + action.dest.upper()
            raise SystemExit(f"oshu-operator: {env}={value!r}: expected one of {', '.join(map(str, action.choices))}")


def _upstream_ca(path: str | None) -> bytes:
    """--sidecar-upstream-ca-file, read and checked once at startup (b"" when not given)."""
    if not path:
        return b""
    from .material import upstream_ca

    try:
        with open(path, "rb") as f:
            return upstream_ca(f.read(), path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"oshu-operator: --sidecar-upstream-ca-file: {e}") from None


def _check_sidecar_ports(args: argparse.Namespace) -> None:
    """The injected sidecar's listeners need distinct ports (the transparent one is fixed)."""
    if args.sidecar_proxy_port == args.sidecar_admin_port:
        raise SystemExit(
            f"oshu-operator: --sidecar-proxy-port and --sidecar-admin-port are both "
            f"{args.sidecar_proxy_port}; give them different ports"
        )
    if SIDECAR_TRANSPARENT_PORT in (args.sidecar_proxy_port, args.sidecar_admin_port):
        raise SystemExit(
            f"oshu-operator: port {SIDECAR_TRANSPARENT_PORT} is the sidecar's transparent listener "
            "(enforcement: redirect); give the proxy and admin ports others"
        )


def config_from_args(args: argparse.Namespace) -> OperatorConfig:
    _check_env_choices(args)
    if args.dev_webhook and (args.webhook_cert_file or args.webhook_tls_secret):
        raise SystemExit("oshu-operator: --dev-webhook makes its own certificate; drop the other TLS options")
    if bool(args.webhook_cert_file) != bool(args.webhook_key_file):
        raise SystemExit("oshu-operator: --webhook-cert-file and --webhook-key-file go together")
    if args.all_namespaces and args.namespaces:
        raise SystemExit("oshu-operator: --all-namespaces and --namespace exclude each other")
    _check_sidecar_ports(args)
    no_proxy = [x.strip() for x in args.no_proxy.split(",") if x.strip()]
    api_host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if api_host and api_host not in no_proxy:
        no_proxy.append(api_host)
    host, port = args.webhook_listen
    mhost, mport = args.metrics_listen
    return OperatorConfig(
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespaces=tuple(dict.fromkeys(args.namespaces or ())),
        own_namespace=args.own_namespace,
        webhook_host=host,
        webhook_port=port,
        webhook_cert_file=args.webhook_cert_file,
        webhook_key_file=args.webhook_key_file,
        dev_webhook=args.dev_webhook,
        dev_webhook_config=args.dev_webhook_config,
        webhook_tls_secret=args.webhook_tls_secret,
        webhook_service=args.webhook_service,
        webhook_config_name=args.webhook_config_name,
        failure_policy=args.failure_policy,
        metrics_host=mhost,
        metrics_port=mport,
        sidecar=SidecarConfig(
            image=args.sidecar_image,
            pull_policy=args.sidecar_pull_policy,
            cpu_request=args.sidecar_cpu_request,
            memory_request=args.sidecar_memory_request,
            cpu_limit=args.sidecar_cpu_limit,
            memory_limit=args.sidecar_memory_limit,
            proxy_port=args.sidecar_proxy_port,
            admin_port=args.sidecar_admin_port,
            log_level=args.sidecar_log_level,
            upstream_ca_pem=_upstream_ca(args.sidecar_upstream_ca_file),
        ),
        no_proxy=tuple(no_proxy),
        default_enforcement=args.default_enforcement,
        revocation_grace=args.revocation_grace,
        ca_validity=args.ca_validity,
        resync_interval=args.resync_interval,
        token_wait=args.token_wait,
        max_concurrent_reconciles=max(1, args.max_concurrent_reconciles),
        peering=args.peering,
        log_level=args.log_level,
        log_format=args.log_format,
    )


async def run(config: OperatorConfig) -> None:
    import kopf

    from . import logs
    from .handlers import REFUSING_WEBHOOKS, WAITING_HANDLERS, build_registry
    from .health import HealthServer
    from .kube import Kube, new_api_client
    from .runtime import Runtime

    logs.expect_outcomes(REFUSING_WEBHOOKS, WAITING_HANDLERS)

    kube = Kube(await new_api_client(config.kubeconfig, config.context))
    rt = Runtime(config, kube)
    health = HealthServer(config.metrics_host, config.metrics_port, rt.metrics, rt.readiness)
    await health.start()
    log.info(
        "operator starting",
        extra={
            "namespaces": list(config.namespaces) or "all",
            "webhook": f"{config.webhook_host}:{config.webhook_port}",
            "dev_webhook": config.dev_webhook,
            "metrics": f"{config.metrics_host}:{health.bound_port}",
            "sidecar_image": config.sidecar.image,
        },
    )
    try:
        await kopf.operator(
            registry=build_registry(rt),
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            standalone=config.peering is None,
            peering_name=config.peering,
            ready_flag=rt.kopf_ready,
        )
    finally:
        await health.stop()
        await rt.close()


def print_webhook_config(config: OperatorConfig, name: str) -> None:
    from .webhookconfig import configuration

    if not config.webhook_service:
        raise SystemExit("oshu-operator: --print-webhook-config needs --webhook-service NS/NAME")
    ns, svc = config.webhook_service.split("/")
    print(
        json.dumps(
            configuration(name, config, {"service": {"namespace": ns, "name": svc, "port": 443}}, None), indent=2
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    if args.print_webhook_config:
        print_webhook_config(config, args.print_webhook_config)
        return 0
    from . import logs

    logs.setup(config.log_level, config.log_format)
    problem = revocation_grace_problem(config.revocation_grace)
    if problem:
        log.warning("revocation grace too short", extra={"detail": problem})
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
