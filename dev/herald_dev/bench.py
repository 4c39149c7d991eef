"""`make bench`: what Herald's guarantees cost, against a naive mailer, side by side.

Both deliver the same N personalised messages over the same number of SMTP connections to
Postfix's smtp-sink on loopback:
- herald: `herald job` as a campaign's ServiceAccount, on a real control plane and a
  ledger Redis with appendfsync always (a fenced mark and a record per message);
- baseline: a plain batch mailer, Jinja2's sandbox and the standard library's
  EmailMessage into aiosmtplib's send_message, remembering nothing (the kind of job the
  03:30 incident came from).

Each program runs at N/10 and N messages, so that what a run costs once (start-up, reading
the campaign, seeding the ledger, the watches' start and end) and what each message costs
come apart: the slope is the rate once running. Runs alternate (herald, baseline,
baseline, herald, ...) so a noisy machine weighs on both. Reported: wall time of each
process from start to exit, peak RSS (from wait4), medians over the rounds, and the ratios
herald / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from herald_api.models import CampaignSpec
from herald_dev import build
from herald_dev.controlplane import ControlPlane
from herald_dev.servers import LEDGER_REDIS_SETTINGS, redis_service, smtp_sink_service
from herald_dev.services import free_port, start_all, stop_all
from herald_dev.stack import MANIFESTS
from herald_operator.builders import Campaign, job_access

FROM = "Notices <no-reply@example.com>"
SUBJECT = "Personal information usage report, {{ year }}"
TEXT = ("Hello {{ name }},\n\nthis is the yearly report of how we used your personal "
        "information in {{ year }}.\n\nExample Notices\n")


def recipients(count: int) -> list[tuple[str, str]]:
    return [(f"user{i}@example.com", f"User {i}") for i in range(count)]


# -- the baseline: a naive batch mailer -------------------------------------------------

async def naive_mailer(port: int, count: int, connections: int) -> int:
    import aiosmtplib
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined)
    subject, text = env.from_string(SUBJECT), env.from_string(TEXT)
    todo = iter(recipients(count))
    sent = 0

    async def session() -> None:
        nonlocal sent
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
        await smtp.connect()
        for address, name in todo:  # one shared iterator: each recipient once
            message = EmailMessage()
            message["From"], message["To"] = FROM, address
            message["Subject"] = subject.render(year="2026")
            message["Message-ID"] = make_msgid(domain="example.com")
            message.set_content(text.render(name=name, year="2026"))
            await smtp.send_message(message)
            sent += 1
        await smtp.quit()

    await asyncio.gather(*(session() for _ in range(connections)))
    return sent


# -- the runs ---------------------------------------------------------------------------

@dataclass
class Measured:
    seconds: float
    peak_rss_mib: float


def measure(argv: list[str], env: dict[str, str], log: Path) -> Measured:
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exited {proc.returncode}:\n{log.read_text()[-2000:]}")
    return Measured(seconds, usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


class Bench:
    def __init__(self, workdir: Path, connections: int) -> None:
        self.workdir, self.connections = workdir, connections
        self.cp = ControlPlane(workdir / "cluster")
        self.redis_port, self.sink_port = free_port(), free_port()
        self.services = [*self.cp.services, redis_service(workdir / "redis", self.redis_port),
                         smtp_sink_service(workdir / "sink", self.sink_port)]
        self.rounds = 0

    def __enter__(self) -> Bench:
        self.cp.prepare()
        start_all(self.services, attached=True, timeout=120)
        self.cp.install(*MANIFESTS)
        return self

    def __exit__(self, *_: object) -> None:
        stop_all(self.services)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def herald(self, count: int) -> Measured:
        """One `herald job` delivering a fresh campaign of `count` recipients."""
        self.rounds += 1
        ns, name = f"bench-{self.rounds}", "usage-notice"
        csv = "email,name\n" + "".join(f"{a},{n}\n" for a, n in recipients(count))
        spec = {
            "audience": {"configMaps": [{"name": "recipients", "key": "recipients.csv"}]},
            "message": {"from": FROM, "subject": SUBJECT, "text": TEXT, "vars": {"year": "2026"}},
            "smtp": {"host": "127.0.0.1", "port": self.sink_port, "security": "None",
                     "connections": self.connections},
            "delivery": {"ratePerSecond": 10000},
        }
        self.cp.kubectl("create", "namespace", ns)
        self.cp.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input_=json.dumps({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "recipients"},
            "data": {"recipients.csv": csv}}))
        self.cp.kubectl("apply", "-n", ns, "-f", "-", input_=json.dumps({
            "apiVersion": "herald.dev/v1alpha1", "kind": "NotificationCampaign",
            "metadata": {"name": name}, "spec": spec}))
        obj = json.loads(self.cp.kubectl("get", "nc", name, "-n", ns, "-o", "json"))
        campaign = Campaign(ns, name, obj["metadata"]["uid"],
                            CampaignSpec.model_validate(obj["spec"]))
        for access in job_access(campaign):
            self.cp.kubectl("apply", "-f", "-", input_=json.dumps(access))
        kubeconfig = self.cp.service_account_kubeconfig(
            ns, f"herald-job-{name}", self.workdir / f"{ns}.kubeconfig")
        measured = measure(
            [sys.executable, "-m", "herald_dev.cli", "job", "--namespace", ns, "--campaign",
             name, "--redis-url", self.redis_url],
            {**os.environ, "KUBECONFIG": str(kubeconfig)}, self.workdir / f"{ns}.log")
        ledger = redis.Redis.from_url(self.redis_url)
        sent = sum(int(ledger.hget(key, "sent") or 0)
                   for key in ledger.scan_iter(match=f"herald:{{{ns}/{name}}}:*:counts"))
        if sent != count:
            raise RuntimeError(f"herald sent {sent} of {count}; see {ns}.log")
        return measured

    def baseline(self, count: int) -> Measured:
        self.rounds += 1
        return measure(
            [sys.executable, "-m", "herald_dev.bench", "--naive-mailer", str(self.sink_port),
             "--recipients", str(count), "--connections", str(self.connections)],
            dict(os.environ), self.workdir / f"baseline-{self.rounds}.log")


@dataclass
class Figures:
    """One program's medians: wall time at both sizes, and what they imply."""

    small: float  # seconds for count // 10 messages
    full: float  # seconds for count messages
    rss: float  # peak RSS MiB at count messages
    count: int

    @property
    def per_second(self) -> float:
        """Messages per second once running: the slope between the two sizes (nan when
        the noise of the fixed cost hides it: too few messages)."""
        if self.full <= self.small:
            return math.nan
        return (self.count - self.count // 10) / (self.full - self.small)

    @property
    def fixed(self) -> float:
        """Seconds a run costs whatever its size: start-up, set-up, shut-down."""
        if math.isnan(self.per_second):
            return self.small
        return max(self.small - (self.count // 10) / self.per_second, 0.0)


def figures(runs: list[tuple[Measured, Measured]], count: int) -> Figures:
    return Figures(statistics.median(small.seconds for small, _ in runs),
                   statistics.median(full.seconds for _, full in runs),
                   statistics.median(full.peak_rss_mib for _, full in runs), count)


def report(console: Console, count: int, connections: int,
           runs: dict[str, list[tuple[Measured, Measured]]]) -> None:
    herald, baseline = figures(runs["herald"], count), figures(runs["baseline"], count)
    table = Table(title=f"{count} and {count // 10} messages, {connections} SMTP connections, "
                        f"medians of {len(runs['herald'])} rounds")
    for column in ("", f"wall s ({count // 10})", f"wall s ({count})", "messages/s running",
                   "fixed s per run", f"peak RSS MiB ({count})"):
        table.add_column(column, justify="right")
    for name, f in (("herald", herald), ("baseline", baseline)):
        table.add_row(name, f"{f.small:.2f}", f"{f.full:.2f}", f"{f.per_second:.0f}",
                      f"{f.fixed:.2f}", f"{f.rss:.0f}")
    table.add_row("herald / baseline", f"{herald.small / baseline.small:.2f}×",
                  f"{herald.full / baseline.full:.2f}×",
                  f"{herald.per_second / baseline.per_second:.2f}×", "",
                  f"{herald.rss / baseline.rss:.2f}×")
    console.print(table)
    console.print("Every run: " + "; ".join(
        f"{name} " + ", ".join(f"{s.seconds:.2f}/{f.seconds:.2f} s" for s, f in pairs)
        for name, pairs in runs.items()))
    console.print("Redis: " + ", ".join(f"{k} {v}" for k, v in LEDGER_REDIS_SETTINGS.items()))
    if math.isnan(herald.per_second) or math.isnan(baseline.per_second):
        console.print("The fixed cost hides the running rate (nan): raise --recipients.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m herald_dev.bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--naive-mailer", type=int, metavar="PORT",
                        help=argparse.SUPPRESS)  # the baseline's own process
    args = parser.parse_args(argv)
    if args.naive_mailer:
        sent = asyncio.run(naive_mailer(args.naive_mailer, args.recipients, args.connections))
        return 0 if sent == args.recipients else 1
    if not build.is_built():
        print("the control plane is not built: run `make controlplane`", file=sys.stderr)
        return 2
    console = Console()
    runs: dict[str, list[tuple[Measured, Measured]]] = {"herald": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as tmp, \
            Bench(Path(tmp), args.connections) as bench:
        for i in range(args.rounds):
            order = ("herald", "baseline") if i % 2 == 0 else ("baseline", "herald")
            for name in order:
                run = bench.herald if name == "herald" else bench.baseline
                small, full = run(args.recipients // 10), run(args.recipients)
                runs[name].append((small, full))
                console.print(f"round {i + 1} {name}: {small.seconds:.2f} s, "
                              f"{full.seconds:.2f} s, {full.peak_rss_mib:.0f} MiB")
    report(console, args.recipients, args.connections, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
