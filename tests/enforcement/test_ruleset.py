"""The pure renderer: options -> nft text, checked rule by rule without sockets or nft."""

from __future__ import annotations

import ipaddress

import pytest

from oshu_sidecar.ruleset import (
    RulesError,
    canonical,
    filter_rules,
    nat_rules,
    options,
    parse_canary,
    script,
    table_text,
)


def test_default_rules_in_order() -> None:
    o = options(dns_servers=["10.96.0.10"])
    assert nat_rules(o) == [
        "ip daddr 127.86.86.1 tcp dport 9 redirect to :15001",
        'oifname "lo" accept',
        "meta skuid 65532 accept",
        "ip daddr 10.96.0.10 tcp dport 53 accept",
        "ip daddr 169.254.169.254 accept",
        "ip6 daddr fd00:ec2::254 accept",
        "meta l4proto tcp redirect to :15001",
    ]
    assert filter_rules(o) == [
        'oifname "lo" accept',
        "ct state established,related accept",
        "ip daddr 169.254.169.254 reject with icmpx admin-prohibited",
        "ip6 daddr fd00:ec2::254 reject with icmpx admin-prohibited",
        "ip daddr 10.96.0.10 udp dport 53 accept",
        "ip daddr 10.96.0.10 tcp dport 53 accept",
        "ip daddr 127.0.0.1 tcp dport 15001 accept",
        "ip6 daddr ::1 tcp dport 15001 accept",
        "meta skuid 65532 meta l4proto tcp accept",
        "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept",
        "meta l4proto tcp reject with tcp reset",
        "reject with icmpx admin-prohibited",
    ]


def test_the_canary_comes_before_every_exemption() -> None:
    """Redirected for every uid, the sidecar's included: its readiness probe proves the rules."""
    rules = nat_rules(options(proxy_uid=1234, exclude_cidrs=["192.0.2.0/24"], canary="192.0.2.7:99"))
    assert rules[0] == "ip daddr 192.0.2.7 tcp dport 99 redirect to :15001"
    assert rules.index("meta skuid 1234 accept") > 0
    v6 = nat_rules(options(canary="[fd00::1]:9"))
    assert v6[0] == "ip6 daddr fd00::1 tcp dport 9 redirect to :15001"


def test_the_redirect_is_last_and_the_filter_rejects_the_rest() -> None:
    o = options()
    assert nat_rules(o)[-1] == "meta l4proto tcp redirect to :15001"
    assert filter_rules(o)[-1] == "reject with icmpx admin-prohibited"
    text = table_text(o)
    assert "type filter hook output priority filter; policy drop;" in text
    assert "hook input" not in text and "prerouting" not in text  # inbound untouched


def test_no_dns_server_means_no_dns() -> None:
    o = options()
    assert not [r for r in nat_rules(o) + filter_rules(o) if "dport 53" in r]


def test_dns_servers_of_both_families_sorted() -> None:
    o = options(dns_servers=["10.0.0.20", "fd00::a", "10.0.0.3", "10.0.0.3"])
    assert "ip daddr { 10.0.0.3, 10.0.0.20 } udp dport 53 accept" in filter_rules(o)
    assert "ip6 daddr fd00::a udp dport 53 accept" in filter_rules(o)
    assert "ip6 daddr fd00::a tcp dport 53 accept" in nat_rules(o)


def test_excluded_cidrs_and_ports_bypass_both_chains() -> None:
    o = options(
        exclude_cidrs=["10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16", "fd00:1::/64", "203.0.113.9"],
        exclude_ports=["8443", 22, 22],
    )
    expected = [
        "ip daddr { 10.1.0.0/16, 10.2.0.0/16, 203.0.113.9 } accept",
        "ip6 daddr fd00:1::/64 accept",
        "tcp dport { 22, 8443 } accept",
    ]
    for chain in (nat_rules(o), filter_rules(o)):
        at = chain.index(expected[0])
        assert chain[at : at + 3] == expected
    # the bypass sits before the redirect, and after the proxy's exemption
    nat = nat_rules(o)
    assert nat.index(expected[0]) < nat.index("meta l4proto tcp redirect to :15001")


def test_allow_metadata_drops_the_reject_and_lets_the_proxy_decide() -> None:
    o = options(allow_metadata=True)
    assert not [r for r in nat_rules(o) + filter_rules(o) if "169.254.169.254" in r or "fd00:ec2::254" in r]
    blocked = options()
    # rejected before the proxy uid's exemption: the sidecar cannot reach it either
    rules = filter_rules(blocked)
    assert rules.index("ip daddr 169.254.169.254 reject with icmpx admin-prohibited") < rules.index(
        "meta skuid 65532 meta l4proto tcp accept"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"proxy_uid": 0}, "--proxy-uid"),
        ({"proxy_uid": "nobody"}, "--proxy-uid"),
        ({"transparent_port": 0}, "--transparent-port"),
        ({"transparent_port": "70000"}, "--transparent-port"),
        ({"dns_servers": ["resolver.local"]}, "--dns-server"),
        ({"exclude_cidrs": ["10.0.0.0/33"]}, "--exclude-cidr"),
        ({"exclude_cidrs": ["0.0.0.0/0"]}, "turns enforcement off"),
        ({"exclude_cidrs": ["::/0"]}, "turns enforcement off"),
        ({"exclude_ports": ["http"]}, "--exclude-port"),
        ({"canary": "192.0.2.1"}, "--canary"),
        ({"canary": "nowhere:9"}, "--canary"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RulesError, match=message):
        options(**kwargs)


def test_parse_canary() -> None:
    assert parse_canary("192.0.2.1:9") == (ipaddress.ip_address("192.0.2.1"), 9)
    assert parse_canary("[2001:db8::1]:15") == (ipaddress.ip_address("2001:db8::1"), 15)


def test_script_replaces_the_table_in_one_transaction() -> None:
    text = script(options())
    first, second, rest = text.split("\n", 2)
    assert (first, second) == ("table inet oshu_vault", "delete table inet oshu_vault")
    assert rest == table_text(options())
    assert text == script(options())  # same options, same bytes: rendering is deterministic


def test_canonical_ignores_indentation_handles_and_set_order() -> None:
    listed = "table inet oshu_vault {\n\tchain c { # handle 1\n\t\ttcp dport { 8443, 22 } accept # handle 4\n\n\t}\n}\n"
    rendered = "table inet oshu_vault {\n  chain c {\n    tcp dport { 22, 8443 } accept\n  }\n}"
    assert canonical(listed) == canonical(rendered)
    assert canonical(listed) != canonical(rendered.replace("8443", "8444"))


def test_canonical_reads_protocol_numbers_as_names() -> None:
    """Without /etc/protocols (the minbase sidecar image) nft lists `meta l4proto 6`: still as rendered."""
    rendered = "meta l4proto tcp redirect to :15001\nmeta skuid 65532 meta l4proto tcp accept\n"
    listed = "meta l4proto 6 redirect to :15001\nmeta skuid 65532 meta l4proto 6 accept\n"
    assert canonical(listed) == canonical(rendered)
    assert canonical(listed.replace(" 6 ", " 17 ", 1)) != canonical(rendered)
