"""`herald demo`: the main job on the local stack, run as a user would run it.

It brings the stack up, resets the demo's own namespace, ledger keys and captured mail,
applies the samples from manifests/samples/, starts runs with `kubectl create job
--from=cronjob/…` (CronJob → Job → Pod, the pods run by the local executor), and checks
what it shows: every valid recipient got exactly one message, a second run sends
nothing, and a suspend stops delivery. It exits 1 when any of that does not hold, and
leaves the stack running.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any, cast
from zoneinfo import ZoneInfo

import redis
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from herald_api.models import Audience
from herald_dev import samples
from herald_dev.stack import REPO, DevStack
from herald_jobs.audience import AudienceReader

NAMESPACE = "herald-demo"
SAMPLES = REPO / "manifests" / "samples"
MAIN, SECOND = "usage-notice-2026", "terms-update"
SUSPEND_WITHIN_SECONDS = 2.0  # a loose bound on the promise of one second
DEMO_SENDERS = ("privacy-notice@example.com", "terms@example.com")  # the samples' From


@dataclass
class Check:
    what: str
    ok: bool
    detail: str


class Demo:
    def __init__(self, stack: DevStack, recipients: int, console: Console) -> None:
        self.stack, self.recipients, self.console = stack, recipients, console
        self.checks: list[Check] = []
        self.runs = 0

    # -- set-up ---------------------------------------------------------------------------

    def run(self) -> int:
        say = self.console.print
        say("[bold]herald demo[/]: bringing the local stack up...")
        self.stack.up()
        self.api = config.new_client_from_config(config_file=str(self.stack.cluster.kubeconfig))
        self.custom = client.CustomObjectsApi(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.redis = redis.Redis.from_url(self.stack.env()["HERALD_REDIS_URL"])
        self.reset()
        csv_text = samples.recipients_csv(self.recipients)
        self.kubectl_apply(yaml.safe_dump(yaml.safe_load(samples.configmap_yaml(
            self.recipients)), allow_unicode=True))
        self.apply_campaign(MAIN)
        say(f"applied {MAIN} with {self.recipients} recipients (manifests/samples/)")

        seconds = self.deliver(MAIN, "first run")
        self.summary(MAIN, csv_text, seconds)
        before = (self.status(MAIN)["sent"], len(self.journal("privacy-notice@example.com")))
        self.deliver(MAIN, "second run")
        after = (self.status(MAIN)["sent"], len(self.journal("privacy-notice@example.com")))
        self.check("a second run sends nothing new", after == before,
                   f"status sent {before[0]} → {after[0]}; "
                   f"{after[1] - before[1]} new messages captured")
        self.suspend_mid_run()
        return self.report()

    def reset(self) -> None:
        """The demo's namespace, ledger keys and captured mail, as if never run."""
        core = client.CoreV1Api(self.api)
        try:
            core.delete_namespace(NAMESPACE)
            self.console.print(f"deleting namespace {NAMESPACE} from an earlier demo...")
        except ApiException as err:
            if err.status != 404:
                raise
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                core.read_namespace(NAMESPACE)
            except ApiException as err:
                if err.status == 404:
                    break
                raise
            time.sleep(0.5)
        for key in self.redis.scan_iter(match=f"herald:{{{NAMESPACE}/*", count=1000):
            self.redis.delete(key)
        # The demo's own mail only: other campaigns' mail in the capture folder stays.
        journal = self.stack.maildir / "journal.jsonl"
        if journal.exists():
            kept = []
            for line in journal.read_text().splitlines():
                entry = json.loads(line)
                if entry["mail_from"] not in DEMO_SENDERS:
                    kept.append(line + "\n")
                elif entry.get("file"):
                    (self.stack.maildir / entry["file"]).unlink(missing_ok=True)
            journal.write_text("".join(kept))  # in place: the server appends to this file
        self.kubectl_apply((SAMPLES / "namespace.yaml").read_text())

    def kubectl_apply(self, manifest: str) -> None:
        # Server-side: a 10,000-line ConfigMap is too big for the client-side annotation.
        self.stack.cluster.kubectl("apply", "--server-side", "-f", "-", input_=manifest)

    def apply_campaign(self, name: str) -> None:
        body = yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())
        spec = body["spec"]
        spec["smtp"]["port"] = self.stack.ports["smtp"]
        spec["windows"].append(open_now_window(ZoneInfo(spec["timeZone"])))
        window = spec["windows"][-1]
        self.console.print(
            f"[dim]{name}: its window is Seoul business hours; the demo adds one open now "
            f"({window['start']}–{window['end']} {spec['timeZone']}) so that it delivers at "
            "once[/]")
        self.kubectl_apply(json.dumps(body, ensure_ascii=False))

    # -- runs -----------------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any]:
        obj = cast(dict[str, Any], self.custom.get_namespaced_custom_object(
            "herald.dev", "v1alpha1", NAMESPACE, "notificationcampaigns", name))
        return dict(obj.get("status") or {})

    def wait(self, what: str, predicate: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"herald demo: {what} not seen within {timeout:.0f} s")

    def trigger(self, name: str) -> str:
        """Start a run as a user would: a Job from one of the campaign's CronJobs."""
        cronjob = self.wait(f"{name}'s CronJobs", lambda: self.status(name).get("cronJobs"),
                            60)[0]
        self.runs += 1
        job = f"{name[:40]}-demo-{self.runs}"
        self.stack.cluster.kubectl("create", "job", f"--from=cronjob/{cronjob}", job,
                                   "-n", NAMESPACE)
        self.console.print(f"$ kubectl create job --from=cronjob/{cronjob} {job} "
                           f"-n {NAMESPACE}")
        return job

    def job_done(self, job: str) -> str:
        status = self.batch.read_namespaced_job_status(job, NAMESPACE).status
        for condition in (status.conditions if status else None) or []:
            if condition.type in ("Complete", "Failed") and condition.status == "True":
                return str(condition.type)
        return ""

    def deliver(self, name: str, label: str) -> float:
        """Run once and show progress until the Job ends; returns the seconds it took."""
        job = self.trigger(name)
        started = time.monotonic()
        sent_before = self.status(name).get("sent") or 0
        columns = (TextColumn(f"{label}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]:>8.0f}/s"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(label, total=None, rate=0.0)
            result = ""
            while not result:
                status = self.status(name)
                total = (status.get("total") or 0) - (status.get("failed") or 0)
                sent = status.get("sent") or 0
                elapsed = time.monotonic() - started
                bar.update(task, total=total or None, completed=sent,
                           rate=(sent - sent_before) / max(elapsed, 0.001))
                result = self.job_done(job)
                time.sleep(0.25)
        elapsed = time.monotonic() - started
        if result != "Complete":
            self.check(f"{label}: the Job completes", False, f"Job {job} {result}")
        return elapsed

    def journal(self, mail_from: str) -> list[dict[str, Any]]:
        text = (self.stack.maildir / "journal.jsonl").read_text()
        complete = text[:text.rfind("\n") + 1]  # the server may be writing a line now
        return [e for e in (json.loads(line) for line in complete.splitlines())
                if e["mail_from"] == mail_from and e["outcome"] == "accepted"]

    # -- what it shows --------------------------------------------------------------------

    def summary(self, name: str, csv_text: str, seconds: float) -> None:
        # The operator reacts to the last count, and the end of the Job, with Completed.
        status = self.wait(f"{name} phase Completed", lambda: (
            s := self.status(name)).get("phase") == "Completed" and s, 30)
        reasons = self.failure_reasons(name, status.get("dedupeKey") or "")
        table = Table(title=f"{NAMESPACE}/{name}", show_header=False)
        rows = [
            ("total (distinct recipients)", status.get("total")),
            ("sent", status.get("sent")),
            ("failed", status.get("failed")),
            *[(f"  {reason}", count) for reason, count in reasons.most_common()],
            ("duplicates in the audience", status.get("duplicatesInAudience")),
            ("duplicates prevented", status.get("duplicatesPrevented")),
            ("unknown", status.get("unknown")),
            ("pending", status.get("pending")),
            ("elapsed (Job created → Job complete)", f"{seconds:.1f} s"),
            ("messages per second", f"{(status.get('sent') or 0) / max(seconds, 0.001):.0f}"),
            ("captured mail (.eml)", str(self.stack.maildir)),
        ]
        for key, value in rows:
            table.add_row(key, str(value))
        self.console.print(table)
        self.console.out(self.stack.cluster.kubectl("get", "nc", name, "-n", NAMESPACE))

        # Each valid recipient exactly once, by the server's own record.
        audience = Audience.model_validate(
            {"configMaps": [{"name": samples.CONFIGMAP, "key": samples.KEY}]})
        people = list(AudienceReader(audience, [csv_text], []))
        valid = {p.identity for p in people if not p.invalid}
        self.valid = len(valid)
        invalid = {p.identity for p in people if p.invalid}
        received = collections.Counter(r.casefold() for e in self.journal(
            "privacy-notice@example.com") for r in e["rcpt_tos"])
        twice = [r for r, n in received.items() if n > 1]
        self.check("each valid recipient got exactly one message",
                   set(received) == valid and not twice,
                   f"{len(received)} of {len(valid)} valid recipients received mail; "
                   f"{len(twice)} more than once; {len(set(received) - valid)} unexpected")
        counts = {k: status.get(k) or 0 for k in
                  ("total", "sent", "failed", "unknown", "pending", "withdrawn")}
        self.check("status counts match what the server received",
                   counts["sent"] == len(received) and counts["failed"] == len(invalid)
                   and counts["total"] == len(valid) + len(invalid)
                   and counts["total"] == sum(v for k, v in counts.items() if k != "total")
                   and status.get("duplicatesInAudience") == len(people) - counts["total"],
                   json.dumps(counts))

    def failure_reasons(self, name: str, dedupe_key: str) -> collections.Counter[str]:
        ledger = self.redis.hgetall(f"herald:{{{NAMESPACE}/{name}}}:{dedupe_key}:ledger")
        entries = (json.loads(v) for v in ledger.values())
        return collections.Counter(e.get("r", "") for e in entries if e["s"] == "failed")

    def suspend_mid_run(self) -> None:
        self.apply_campaign(SECOND)
        job = self.trigger(SECOND)
        # Early enough that at its rate the run has seconds of work left when suspended.
        self.wait(f"{SECOND}'s first messages", lambda: len(self.journal(
            "terms@example.com")) >= min(200, self.valid // 5), 120)
        told = time.time()
        self.stack.cluster.kubectl("patch", "nc", SECOND, "-n", NAMESPACE, "--type", "merge",
                                   "-p", '{"spec":{"suspend":true}}')
        self.console.print(f"$ kubectl patch nc {SECOND} -n {NAMESPACE} --type merge "
                           "-p '{\"spec\":{\"suspend\":true}}'")
        result = self.wait(f"Job {job} to end", lambda: self.job_done(job), 120)
        received = self.journal("terms@example.com")
        last = max(e["time"] for e in received) - told
        pending = self.wait(f"{SECOND}'s final counts", lambda: (
            s := self.status(SECOND)).get("lastRun", {}).get("job") == job and s, 30)["pending"]
        self.check("suspend stops delivery mid-run",
                   result == "Complete" and last <= SUSPEND_WITHIN_SECONDS
                   and pending > 0 and len(received) < self.valid,
                   f"last message handed over {last:+.2f} s after the patch; "
                   f"{len(received)} of {self.valid} got it, {pending} left pending")
        phase = self.wait(f"{SECOND} phase Suspended",
                          lambda: self.status(SECOND).get("phase") == "Suspended", 30)
        self.check(f"{SECOND} shows phase Suspended", bool(phase), "")

    def check(self, what: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(what, ok, detail))
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        self.console.print(f"{mark} {what}" + (f" [dim]({detail})[/]" if detail else ""))

    def report(self) -> int:
        failed = [c for c in self.checks if not c.ok]
        home = self.stack.home
        herald = shlex.quote(sys.argv[0])  # as it was called, e.g. .venv/bin/herald
        self.console.print(
            f"\nThe stack keeps running (home {home}). Explore it:\n"
            f'  eval "$({herald} dev env)"\n'
            f"  kubectl get nc -n {NAMESPACE} -w\n"
            f"  kubectl describe nc {MAIN} -n {NAMESPACE}\n"
            f"  ls {self.stack.maildir} | head\n"
            f"Stop it with: {herald} dev down")
        if failed:
            self.console.print(f"[red bold]{len(failed)} check(s) failed[/]")
            return 1
        self.console.print("[green bold]all checks passed[/]")
        return 0


def open_now_window(zone: ZoneInfo) -> dict[str, Any]:
    """A window, every day, from a few minutes ago to three hours from now (local time)."""
    now = dt.datetime.now(zone)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(hours=3)
    return {"days": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
            "start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}


def main(stack: DevStack, recipients: int) -> int:
    return Demo(stack, recipients, Console(soft_wrap=True)).run()


