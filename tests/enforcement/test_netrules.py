"""`oshu-vault-netrules` in a real network namespace: install, idempotence, --check, who can change them,
and what the rules do to raw sockets (a stand-in listener on the transparent port, no sidecar)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from oshu_sidecar import netrules, ruleset
from oshu_testkit.netns import (
    METADATA_V4,
    METADATA_V6,
    OTHER_RESOLVER,
    OUTSIDE_V4,
    OUTSIDE_V6,
    RESOLVER,
    Recorder,
    Topology,
    entered,
    run_in,
)
from oshu_testkit.redirect import (
    AGENT_UID,
    BANNER,
    CANARY,
    PROXY_UID,
    StandIn,
    install,
    listing,
    probe,
    remove_rules,
)


@pytest.fixture
def rules(topo: Topology) -> Iterator[None]:
    assert install(topo) == 0
    yield
    remove_rules(topo)


def _no_handles(text: str) -> str:
    return re.sub(r" # handle \d+", "", text)


def test_install_twice_is_idempotent_and_listed_as_rendered(topo: Topology) -> None:
    try:
        assert install(topo, "--exclude-port", "2222", "--exclude-cidr", "10.231.99.0/24") == 0
        first = listing(topo)
        assert install(topo, "--exclude-port", "2222", "--exclude-cidr", "10.231.99.0/24") == 0
        assert listing(topo) == first
        o = ruleset.options(dns_servers=[RESOLVER], exclude_ports=["2222"], exclude_cidrs=["10.231.99.0/24"])
        assert ruleset.canonical(first) == ruleset.canonical(ruleset.table_text(o))
        assert install(topo, "--exclude-port", "2222", "--exclude-cidr", "10.231.99.0/24", "--check") == 0
        # a different rendering is reported, the installed table stays as it was
        assert install(topo, "--check") == 1
        run_in(topo.agent, ["nft", "add", "rule", "inet", "oshu_vault", "filter_output", "accept"])
        assert install(topo, "--exclude-port", "2222", "--exclude-cidr", "10.231.99.0/24", "--check") == 1
        # re-running replaces the tampered table atomically
        assert install(topo, "--exclude-port", "2222", "--exclude-cidr", "10.231.99.0/24") == 0
        assert _no_handles(listing(topo)) == _no_handles(first)
    finally:
        remove_rules(topo)
    assert install(topo, "--check") == 1  # nothing installed


def test_the_console_script_in_a_namespace_reads_resolv_conf(topo: Topology) -> None:
    """`python -m oshu_sidecar.netrules` without --dns-server: the resolvers of the namespace's resolv.conf."""
    cmd = [sys.executable, "-m", "oshu_sidecar.netrules"]
    try:
        p = subprocess.run(topo.cmd(cmd), capture_output=True, text=True, timeout=60, check=False)
        assert p.returncode == 0, p.stderr
        assert f"ip daddr {RESOLVER} udp dport 53 accept" in listing(topo)
        record = json.loads(p.stderr.strip().splitlines()[-1])
        assert (record["msg"], record["dns_servers"], record["listed_as_rendered"]) == (
            "netrules installed",
            [RESOLVER],
            True,
        )
        assert subprocess.run(topo.cmd([*cmd, "--check"]), capture_output=True, timeout=60).returncode == 0
    finally:
        remove_rules(topo)


def test_dry_run_prints_and_changes_nothing(topo: Topology, capsys: pytest.CaptureFixture[str]) -> None:
    assert install(topo, "--dry-run", "--allow-metadata") == 0
    out = capsys.readouterr().out
    assert out.startswith("table inet oshu_vault\ndelete table inet oshu_vault\n")
    assert "169.254.169.254" not in out
    assert run_in(topo.agent, ["nft", "list", "table", "inet", "oshu_vault"]).returncode != 0


def test_bad_options_and_missing_nft(topo: Topology, tmp_path: object) -> None:
    assert install(topo, "--exclude-cidr", "0.0.0.0/0") == 2
    assert install(topo, "--nft", "/nonexistent/nft") == 3
    assert netrules.main(["--resolv-conf", "/nonexistent/resolv.conf", "--dry-run"]) == 2


def test_resolv_conf_parsing() -> None:
    text = "# c\nsearch svc.cluster.local\nnameserver 10.96.0.10\nnameserver fe80::1%eth0 # x\noptions ndots:5\n"
    assert netrules.resolv_nameservers(text) == ["10.96.0.10", "fe80::1"]


def test_nft_timeout_is_bounded() -> None:
    with pytest.raises(netrules.NftError, match="no answer within"):
        netrules.nft("sleep", ["5"], timeout=0.2)


@pytest.mark.usefixtures("rules")
def test_the_agent_uid_cannot_change_or_flush_them(topo: Topology) -> None:
    before = listing(topo)
    for argv in (
        ["nft", "flush", "ruleset"],
        ["nft", "delete", "table", "inet", "oshu_vault"],
        ["nft", "add", "rule", "inet", "oshu_vault", "filter_output", "position", "0", "accept"],
        ["ip", "route", "del", "default"],
    ):
        p = subprocess.run(topo.cmd(argv, uid=AGENT_UID, env={"PATH": "/usr/sbin:/usr/bin:/bin"}), capture_output=True)
        assert p.returncode != 0, argv
    assert listing(topo) == before


# -- what the rules do to traffic --------------------------------------------------------------------

#: (probe, expected when the rules are installed) for the agent's uid; without rules every one reaches outside.
TCP_TARGETS = [(OUTSIDE_V4, 8080), (OUTSIDE_V6, 8080)]


def _clear(recorder: Recorder, standin: StandIn) -> None:
    recorder.clear()
    standin.seen.clear()


def test_without_rules_everything_goes_straight_out(topo: Topology, recorder: Recorder, standin: StandIn) -> None:
    """The control: every probe below reaches the outside when the rules are absent."""
    _clear(recorder, standin)
    for host, port in [*TCP_TARGETS, (METADATA_V4, 80), (METADATA_V6, 80)]:
        assert probe(topo, "tcp", host, port)["data"] == "REACHED\n"
        assert recorder.reached("tcp", host, port) == 1
    for host, port in [(OUTSIDE_V4, 443), (OUTSIDE_V6, 443), (RESOLVER, 53), (OTHER_RESOLVER, 53)]:
        assert probe(topo, "udp", host, port)["ok"], (host, port)
    assert not probe(topo, "tcp", *CANARY)["ok"]  # unreachable outside: readiness fails without rules
    for host in (OUTSIDE_V4, OUTSIDE_V6):
        assert probe(topo, "icmp", host, 0, uid=0)["data"] == "echo reply", host
    assert standin.seen == []


@pytest.mark.usefixtures("rules")
def test_agent_tcp_goes_to_the_transparent_port_in_both_families(
    topo: Topology, recorder: Recorder, standin: StandIn
) -> None:
    _clear(recorder, standin)
    for host, port in [*TCP_TARGETS, (OUTSIDE_V4, 1), (OUTSIDE_V6, 65535), ("203.0.113.5", 443)]:
        got = probe(topo, "tcp", host, port)
        assert got["data"] == f"ORIG {host} {port}\n", got
    assert recorder.hits == []


@pytest.mark.usefixtures("rules")
def test_udp_quic_metadata_and_other_resolvers_fail(topo: Topology, recorder: Recorder, standin: StandIn) -> None:
    _clear(recorder, standin)
    for host, port in [(OUTSIDE_V4, 443), (OUTSIDE_V6, 443), (OTHER_RESOLVER, 53)]:
        got = probe(topo, "udp", host, port)
        assert not got["ok"], (host, port, got)
    for host in (METADATA_V4, METADATA_V6):
        for uid in (AGENT_UID, PROXY_UID):  # the sidecar cannot reach it either
            got = probe(topo, "tcp", host, 80, uid=uid)
            # rejected at once (ICMP admin-prohibited: EHOSTUNREACH for IPv4, EACCES for IPv6)
            assert got["ok"] is False and ("Errno 113" in str(got["error"]) or "Errno 13]" in str(got["error"])), got
    assert recorder.hits == [] and standin.seen == []
    # DNS to the allowed resolver passes (UDP and TCP)
    assert probe(topo, "udp", RESOLVER, 53)["data"] == "REACHED:probe"
    assert probe(topo, "tcp", RESOLVER, 53)["data"] == "REACHED\n"
    assert probe(topo, "tcp", OTHER_RESOLVER, 53)["data"] == f"ORIG {OTHER_RESOLVER} 53\n"


@pytest.mark.usefixtures("rules")
def test_other_protocols_fail_for_every_uid_root_included(topo: Topology) -> None:
    """ICMP echo on a raw socket as root (who has CAP_NET_RAW in the namespace; the rules exempt no uid but
    the proxy's, and that only for TCP) is rejected: the control above shows it answered without rules."""
    for host in (OUTSIDE_V4, OUTSIDE_V6):
        got = probe(topo, "icmp", host, 0, uid=0)
        assert got["ok"] is False and "Errno" in str(got["error"]), (host, got)


@pytest.mark.usefixtures("rules")
def test_the_proxy_uid_goes_out_and_the_canary_is_redirected_for_every_uid(
    topo: Topology, recorder: Recorder, standin: StandIn
) -> None:
    _clear(recorder, standin)
    for host, port in TCP_TARGETS:
        assert probe(topo, "tcp", host, port, uid=PROXY_UID)["data"] == "REACHED\n"
    assert recorder.reached("tcp", OUTSIDE_V4, 8080) == recorder.reached("tcp", OUTSIDE_V6, 8080) == 1
    assert not probe(topo, "udp", OUTSIDE_V4, 443, uid=PROXY_UID)["ok"]  # no UDP for the proxy either
    for uid in (AGENT_UID, PROXY_UID, 0):
        assert probe(topo, "tcp", *CANARY, uid=uid)["data"] == BANNER.decode()


def test_excluded_cidrs_and_ports_go_direct(topo: Topology, recorder: Recorder, standin: StandIn) -> None:
    _clear(recorder, standin)
    try:
        assert install(topo, "--exclude-port", "2222", "--exclude-cidr", f"{OUTSIDE_V6}/128") == 0
        assert probe(topo, "tcp", OUTSIDE_V4, 2222)["data"] == "REACHED\n"
        assert probe(topo, "tcp", OUTSIDE_V6, 8080)["data"] == "REACHED\n"
        assert probe(topo, "udp", OUTSIDE_V6, 443)["ok"]  # an excluded CIDR bypasses for every protocol
        assert probe(topo, "tcp", OUTSIDE_V4, 8080)["data"] == f"ORIG {OUTSIDE_V4} 8080\n"
    finally:
        remove_rules(topo)


def test_allow_metadata_lets_the_proxy_decide(topo: Topology, recorder: Recorder, standin: StandIn) -> None:
    _clear(recorder, standin)
    try:
        assert install(topo, "--allow-metadata") == 0
        assert probe(topo, "tcp", METADATA_V4, 80)["data"] == f"ORIG {METADATA_V4} 80\n"
        assert recorder.hits == []
    finally:
        remove_rules(topo)


def test_inbound_connections_are_untouched(topo: Topology) -> None:
    """A server in the pod answers connections from outside (replies pass as established)."""
    from oshu_testkit.netns import AGENT_V4
    from oshu_testkit.netns import Recorder as Listeners

    inside = Listeners(topo.agent)
    inside.tcp(AGENT_V4, 9090)
    try:
        assert install(topo) == 0
        p = run_in(topo.outside, [sys.executable, "-c", _CONNECT.format(host=AGENT_V4, port=9090)])
        assert p.stdout.strip() == "REACHED", p.stderr
    finally:
        remove_rules(topo)
        inside.close()


_CONNECT = (
    "import socket; s = socket.create_connection(({host!r}, {port}), timeout=3); print(s.recv(64).decode().strip())"
)


def test_entered_threads_see_the_namespace(topo: Topology) -> None:
    with entered(topo.agent):
        p = subprocess.run(["ip", "-4", "-o", "addr", "show", "eth0"], capture_output=True, text=True, timeout=10)
    assert "10.231.0.2" in p.stdout


def test_net_admin_and_net_raw_are_all_it_needs(topo: Topology) -> None:
    """As the init container runs: root with every capability dropped but NET_ADMIN and NET_RAW."""
    cmd = [sys.executable, "-m", "oshu_sidecar.netrules", "--dns-server", RESOLVER]

    def with_caps(caps: str) -> subprocess.CompletedProcess[str]:
        argv = ["setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all", *cmd]
        return subprocess.run(topo.cmd(argv), capture_output=True, text=True, timeout=60, check=False)

    try:
        only_raw = with_caps("+net_raw")
        assert only_raw.returncode == 3 and "Operation not permitted" in only_raw.stderr
        p = with_caps("+net_admin,+net_raw")
        assert p.returncode == 0, p.stderr
        assert install(topo, "--check") == 0
    finally:
        remove_rules(topo)
