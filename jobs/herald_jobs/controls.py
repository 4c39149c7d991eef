"""Why a run must stop now, if it must: suspend, cluster halt, a new spec, the window's end,
SIGTERM, or an API it can no longer hear.

The campaign and the DeliveryHalt are watched from threads of their own (the Kubernetes
client blocks), so a stop is seen within moments of the patch, whether the operator runs
or not. A watch that cannot confirm the state for CONFIRM_SECONDS stops the run: a pod
that cannot tell whether it was suspended does not send (fail closed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from kubernetes import client, watch

from herald_api import GROUP, VERSION
from herald_api.models import HALT_NAME, Window
from herald_api.names import LEDGER_LOSS_ACK
from herald_api.windows import open_until

log = logging.getLogger("herald.job")

CONFIRM_SECONDS = 5.0
WATCH_SECONDS = 2  # each watch ends and re-lists this often: a fresh confirmation


def now() -> dt.datetime:
    """The clock of runs; HERALD_CLOCK_OFFSET_SECONDS moves it (for tests only)."""
    offset = float(os.environ.get("HERALD_CLOCK_OFFSET_SECONDS", "0") or 0)
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)


class Watched:
    """The latest state of one object, kept by a thread that lists and watches it."""

    def __init__(self, name: str, lister: Callable[..., Any], **selector: Any) -> None:
        self.name = name
        self.lister = lister
        self.selector = selector
        self.obj: dict[str, Any] | None = None
        self.exists = False
        self.confirmed_at = 0.0  # time.monotonic() of the last answer from the API
        self.stopping = threading.Event()
        self.response: Any = None  # the open watch's HTTP response
        self.thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """End the thread soon: it may be waiting on its watch's next line."""
        self.stopping.set()
        self._interrupt()

    def _interrupt(self) -> None:
        # The read returns at once, not at the watch's timeout. Nothing to do when no watch
        # is open yet or it is ending anyway.
        with contextlib.suppress(AttributeError, ValueError, RuntimeError, OSError):
            self.response.shutdown()

    def fresh(self) -> bool:
        return time.monotonic() - self.confirmed_at < CONFIRM_SECONDS

    def _take(self, items: list[dict[str, Any]]) -> None:
        self.obj = items[0] if items else None
        self.exists = bool(items)
        self.confirmed_at = time.monotonic()

    def _watch(self, *args: Any, **kwargs: Any) -> Any:
        self.response = self.lister(*args, **kwargs)
        if self.stopping.is_set():  # stop() came while this watch was being opened
            self._interrupt()
        return self.response

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                listed = self.lister(**self.selector, _request_timeout=CONFIRM_SECONDS)
                self._take(listed.get("items") or [])
                version = listed["metadata"]["resourceVersion"]
                for event in watch.Watch().stream(
                        self._watch, **self.selector, resource_version=version,
                        timeout_seconds=WATCH_SECONDS, _request_timeout=WATCH_SECONDS + 3):
                    if self.stopping.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._take([event["object"]])
                    elif event["type"] == "DELETED":
                        self._take([])
            except Exception as err:  # the state is unconfirmed until the next answer
                if self.stopping.is_set():
                    return  # the run is over; at interpreter exit, stay silent
                log.warning("watch interrupted", extra={"object": self.name, "error": str(err)})
                self.stopping.wait(0.5)


class Controls:
    """One run's stop conditions, checked before every fenced mark."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, generation: int,
                 windows: list[Window], zone: ZoneInfo) -> None:
        custom = client.CustomObjectsApi(api)
        self.campaign = Watched(
            f"{namespace}/{name}", custom.list_namespaced_custom_object, group=GROUP,
            version=VERSION, namespace=namespace, plural="notificationcampaigns",
            field_selector=f"metadata.name={name}")
        self.halt = Watched(
            HALT_NAME, custom.list_cluster_custom_object, group=GROUP, version=VERSION,
            plural="deliveryhalts", field_selector=f"metadata.name={HALT_NAME}")
        self.generation = generation
        self.windows, self.zone = windows, zone
        self.window_end = open_until(windows, zone, now()) if windows else None
        self.signalled = ""

    def start(self) -> None:
        self.campaign.start()
        self.halt.start()

    def wait_confirmed(self, timeout: float = CONFIRM_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (self.campaign.fresh() and self.halt.fresh()):
            time.sleep(0.05)

    def stop(self) -> None:
        """End both watches and wait for their threads: threads still inside TLS when the
        interpreter exits can abort it."""
        for watched in (self.campaign, self.halt):
            watched.stop()
        for watched in (self.campaign, self.halt):
            if watched.thread.is_alive():
                watched.thread.join(WATCH_SECONDS + 4)

    def recorded_handovers(self, ledger_id: str) -> int:
        """status.ledger's handovers, as last watched, when it is a record of `ledger_id`."""
        record = ((self.campaign.obj or {}).get("status") or {}).get("ledger") or {}
        return int(record.get("handovers", 0)) if record.get("id") == ledger_id else 0

    def reason(self) -> str:
        """Why the run must stop now, or '' to go on."""
        if self.signalled:
            return self.signalled
        if not (self.campaign.fresh() and self.halt.fresh()):
            return "Unconfirmed"
        halt = self.halt.obj or {}
        if (halt.get("spec") or {}).get("halted"):
            return "Halted"
        campaign = self.campaign.obj
        if campaign is None:
            return "Deleted"
        if (campaign.get("spec") or {}).get("suspend"):
            return "Suspended"
        if campaign["metadata"].get("generation") != self.generation:
            return "SpecChanged"
        loss = (campaign.get("status") or {}).get("ledgerLoss") or {}
        acknowledged = (campaign["metadata"].get("annotations") or {}).get(LEDGER_LOSS_ACK)
        if loss and loss.get("id") != acknowledged:
            return "LedgerLost"  # another pod found the ledger lost
        if self.windows and (self.window_end is None or now() >= self.window_end):
            return "WindowClosed"
        return ""
