"""Command line of hack/oshu_images."""

from __future__ import annotations

import argparse
import json

from .build import IMAGES, ImageError, build, import_into_containerd, push


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m oshu_images", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) images; prints {kind: ref} as JSON")
    b.add_argument("kinds", nargs="*", default=list(IMAGES), help=f"any of {', '.join(IMAGES)} (default all)")
    b.add_argument("--import-into", metavar="SOCKET", help="also import them into this containerd (k8s.io)")
    b.add_argument("--push", metavar="REGISTRY", help="also push them to REGISTRY (e.g. ghcr.io/me)")
    b.add_argument("--tls-verify", default="true", choices=["true", "false"], help="for --push")
    args = p.parse_args(argv)
    try:
        images = build(args.kinds)
        refs = {k: v.ref for k, v in images.items()}
        if args.import_into:
            import_into_containerd(images.values(), args.import_into)
        if args.push:
            refs = push(images.values(), args.push, tls_verify=args.tls_verify == "true")
    except ImageError as e:
        print(f"error: {e}")
        return 1
    print(json.dumps(refs, indent=2))
    return 0
