"""Prometheus metrics of the operator."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECONCILES = Counter("herald_reconciles_total", "Campaign reconcile passes")
ERRORS = Counter("herald_reconcile_errors_total", "Campaign reconcile passes that failed")
CAMPAIGNS = Gauge("herald_campaigns", "Campaigns by phase", ["phase"])
PHASES = ("Pending", "Scheduled", "Running", "Suspended", "Completed", "Invalid", "Halted")


def set_phases(counts: dict[str, int]) -> None:
    for phase in PHASES:
        CAMPAIGNS.labels(phase=phase).set(counts.get(phase, 0))
