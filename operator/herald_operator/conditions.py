"""Status conditions as Kubernetes API conventions have them."""

from __future__ import annotations

import datetime as dt
from typing import Any


def condition(type_: str, status: bool, reason: str, message: str,
              old: list[dict[str, Any]], generation: int, now: dt.datetime) -> dict[str, Any]:
    """A condition whose lastTransitionTime moves only when its status does."""
    value = "True" if status else "False"
    previous = next((c for c in old if c.get("type") == type_), None)
    since = (previous.get("lastTransitionTime")
             if previous and previous.get("status") == value else None)
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "observedGeneration": generation,
    }


def is_true(conditions: list[dict[str, Any]], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)
