"""Prometheus metrics of the operator, on a registry of its own (tests can read it directly)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from .names import PHASES
from .rules import RULES

_ADMISSION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.sessions = Gauge(
            "oshu_vault_sessions", "VaultSessions known to the operator, by phase.", ["phase"], registry=self.registry
        )
        self.reconciles = Counter(
            "oshu_vault_reconciles_total", "Reconciles of VaultSessions, by result.", ["result"], registry=self.registry
        )
        self.reconcile_errors = Counter(
            "oshu_vault_reconcile_errors_total",
            "Reconciles that failed and will be retried, by error type.",
            ["error"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "oshu_vault_reconcile_duration_seconds", "Time to reconcile one session.", registry=self.registry
        )
        self.injections = Counter(
            "oshu_vault_injections_total",
            "Pod admissions handled by the injection webhook, by result.",
            ["result"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "oshu_vault_admission_refusals_total",
            "Admission refusals, by the rule that refused (a review breaking two rules counts for both).",
            ["rule"],
            registry=self.registry,
        )
        for rule in RULES:
            self.refusals.labels(rule.id)
        self.admission_seconds = Histogram(
            "oshu_vault_admission_duration_seconds",
            "Time to answer one admission review.",
            buckets=_ADMISSION_BUCKETS,
            registry=self.registry,
        )
        self._phase: dict[tuple[str, str], str] = {}
        for phase in PHASES:
            self.sessions.labels(phase).set(0)

    def set_phase(self, key: tuple[str, str], phase: str | None) -> None:
        old = self._phase.pop(key, None)
        if old is not None:
            self.sessions.labels(old).dec()
        if phase is not None:
            self._phase[key] = phase
            self.sessions.labels(phase).inc()
