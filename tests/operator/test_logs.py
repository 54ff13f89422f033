"""Expected outcomes (a refused pod, a revoked session waiting out its grace) are not logged as
errors; real errors still are. Unit level here; the operator's own log is checked in
test_admission (refusals) and test_reconcile (the revocation wait)."""

from __future__ import annotations

import logging

import pytest

from oshu_operator import logs
from oshu_operator.handlers import REFUSING_WEBHOOKS, REVOCATION_WAIT, WAITING_HANDLERS

KOPF = logging.getLogger("kopf.objects")


@pytest.fixture
def filtered():
    installed = logs.expect_outcomes(REFUSING_WEBHOOKS, WAITING_HANDLERS)
    yield installed
    KOPF.removeFilter(installed)


def _emit(caplog: pytest.LogCaptureFixture, level: int, *messages: str) -> list[tuple[str, str]]:
    caplog.clear()
    with caplog.at_level(level, logger="kopf.objects"):
        for message in messages:
            KOPF.error(message)
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "kopf.objects"]


REFUSAL = "Webhook 'inject' failed permanently: shareProcessNamespace: true is not allowed"
EPHEMERAL = f"Webhook {REFUSING_WEBHOOKS[1]!r} failed permanently: ephemeral container debug targets ..."
WAIT = f"Handler 'revoke' failed temporarily: {REVOCATION_WAIT}"
REAL_ERRORS = (
    "Handler 'revoke' failed temporarily: Kubernetes API error 500 Internal Server Error",
    "Handler 'reconcile' failed temporarily: Kubernetes API unreachable: ClientConnectorError",
    "Webhook 'inject' failed with an exception and will stop now: KeyError('spec')",
    "Webhook 'someone-else' failed permanently: no",
    f"Handler 'reconcile' failed temporarily: {REVOCATION_WAIT}",
)


def test_expected_outcomes_are_debug_and_real_errors_stay_errors(filtered, caplog):
    got = _emit(caplog, logging.DEBUG, REFUSAL, EPHEMERAL, WAIT, *REAL_ERRORS)
    assert got == [("DEBUG", REFUSAL), ("DEBUG", EPHEMERAL), ("DEBUG", WAIT)] + [("ERROR", m) for m in REAL_ERRORS]


def test_expected_outcomes_vanish_at_info(filtered, caplog):
    assert _emit(caplog, logging.INFO, REFUSAL, EPHEMERAL, WAIT, *REAL_ERRORS) == [("ERROR", m) for m in REAL_ERRORS]


def test_installing_twice_keeps_one_filter(filtered):
    again = logs.expect_outcomes(REFUSING_WEBHOOKS, WAITING_HANDLERS)
    try:
        assert [f for f in KOPF.filters if isinstance(f, logs.ExpectedOutcomes)] == [again]
    finally:
        KOPF.removeFilter(again)
