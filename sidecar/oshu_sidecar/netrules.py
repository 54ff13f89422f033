"""`oshu-vault-netrules`: install the pod's egress rules (the init container of `enforcement: redirect`).

Runs once as root with NET_ADMIN and NET_RAW only, before the sidecar starts. The rules
themselves are rendered by the pure `ruleset` module; this is the command line around it:
read the resolvers from /etc/resolv.conf, hand the script to `nft -f -` (one transaction that
replaces the table, so running it twice leaves the same ruleset), or compare what is installed
with what would be rendered (`--check`). `nft` runs with a bounded timeout; every outcome is
one JSON log line on stderr.

Exit codes: 0 done (or `--check`: installed as rendered), 1 `--check`: missing or different,
2 bad options, 3 nft failed or is missing.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .logs import log, setup_logging
from .ruleset import (
    DEFAULT_CANARY,
    DEFAULT_PROXY_UID,
    DEFAULT_TRANSPARENT_PORT,
    FAMILY,
    TABLE,
    RuleOptions,
    RulesError,
    canonical,
    options,
    script,
    table_text,
)

NFT_TIMEOUT = 10.0
RESOLV_CONF = "/etc/resolv.conf"


class NftError(RuntimeError):
    """nft could not be run, timed out or refused the script; the message carries its stderr."""


def resolv_nameservers(text: str) -> list[str]:
    """The `nameserver` addresses of a resolv.conf (comments and other lines ignored)."""
    out = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            out.append(fields[1].split("%", 1)[0])  # fe80::1%eth0: the zone is not part of a rule
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="oshu-vault-netrules",
        description="Install the oshu-vault egress rules (nftables table inet oshu_vault) in this network "
        "namespace: every outbound TCP connection except the proxy's goes to its transparent port, DNS only "
        "to the resolvers, everything else dropped. Idempotent.",
    )
    p.add_argument("--proxy-uid", default=str(DEFAULT_PROXY_UID), help="uid of the sidecar (default %(default)s)")
    p.add_argument("--transparent-port", default=str(DEFAULT_TRANSPARENT_PORT), help="the sidecar's transparent port")
    p.add_argument(
        "--dns-server", action="append", metavar="IP", help="allowed resolver (repeatable; default: resolv.conf's)"
    )
    p.add_argument("--exclude-cidr", action="append", default=[], metavar="CIDR", help="bypass: reached directly")
    p.add_argument("--exclude-port", action="append", default=[], metavar="PORT", help="bypass: TCP dport")
    p.add_argument("--allow-metadata", action="store_true", help="do not reject 169.254.169.254 and fd00:ec2::254")
    p.add_argument("--canary", default=f"{DEFAULT_CANARY[0]}:{DEFAULT_CANARY[1]}", metavar="ADDR:PORT")
    p.add_argument("--resolv-conf", default=RESOLV_CONF, help=argparse.SUPPRESS)
    p.add_argument("--nft", default="nft", help="the nft binary (default: from PATH)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the nft script, change nothing")
    mode.add_argument("--check", action="store_true", help="exit 0 iff the table is installed as rendered")
    return p


def _options(ns: argparse.Namespace) -> RuleOptions:
    dns = ns.dns_server
    if dns is None:
        try:
            dns = resolv_nameservers(Path(ns.resolv_conf).read_text())
        except OSError as e:
            raise RulesError(f"cannot read {ns.resolv_conf} for the resolvers (give --dns-server): {e}") from None
    return options(
        proxy_uid=ns.proxy_uid,
        transparent_port=ns.transparent_port,
        dns_servers=dns,
        exclude_cidrs=ns.exclude_cidr,
        exclude_ports=ns.exclude_port,
        allow_metadata=ns.allow_metadata,
        canary=ns.canary,
    )


def nft(binary: str, args: Sequence[str], stdin: str | None = None, timeout: float = NFT_TIMEOUT) -> str:
    """Run nft; its stdout, or NftError with its stderr."""
    try:
        p = subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise NftError(f"{binary}: not found (the image needs nftables)") from None
    except subprocess.TimeoutExpired:
        raise NftError(f"{binary} {' '.join(args)}: no answer within {timeout} s") from None
    if p.returncode != 0:
        raise NftError(f"{binary} {' '.join(args)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p.stdout


def installed(binary: str) -> str | None:
    """The installed table as nft lists it, or None when there is none."""
    try:
        return nft(binary, ["list", "table", FAMILY, TABLE])
    except NftError as e:
        if "No such file or directory" in str(e):
            return None
        raise


def check(binary: str, o: RuleOptions) -> list[str]:
    """Differences between the installed table and the rendering (empty: installed as rendered)."""
    have = installed(binary)
    if have is None:
        return [f"table {FAMILY} {TABLE} is not installed"]
    want, got = canonical(table_text(o)), canonical(have)
    if want == got:
        return []
    missing = [line for line in want if line not in got]
    extra = [line for line in got if line not in want]
    return [f"missing: {m}" for m in missing] + [f"unexpected: {x}" for x in extra] or ["rule order differs"]


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    setup_logging("info")
    try:
        o = _options(ns)
    except RulesError as e:
        log(logging.ERROR, "netrules: bad options", error=str(e))
        return 2
    if ns.dry_run:
        sys.stdout.write(script(o))
        return 0
    try:
        if ns.check:
            diff = check(ns.nft, o)
            log(logging.INFO if not diff else logging.ERROR, "netrules check", ok=not diff, differences=diff[:20])
            return 0 if not diff else 1
        nft(ns.nft, ["-f", "-"], stdin=script(o))
        diff = check(ns.nft, o)
    except NftError as e:
        log(logging.ERROR, "netrules: nft failed", error=str(e))
        return 3
    log(
        logging.INFO,
        "netrules installed",
        table=f"{FAMILY} {TABLE}",
        proxy_uid=o.proxy_uid,
        transparent_port=o.transparent_port,
        dns_servers=[str(a) for a in o.dns_servers],
        exclude_cidrs=[str(n) for n in o.exclude_cidrs],
        exclude_ports=list(o.exclude_ports),
        allow_metadata=o.allow_metadata,
        listed_as_rendered=not diff,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
