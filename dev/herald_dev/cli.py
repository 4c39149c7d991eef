"""The `herald` command."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

from herald_jobs import main as job_main
from herald_operator import main as operator_main

if TYPE_CHECKING:  # `herald dev` and `herald demo` need the dev extras; the image has none
    from herald_dev.stack import DevStack


def _dev_up(stack: DevStack) -> int:
    stack.up()
    print(f"herald dev stack is up (home {stack.home}).")
    print(f'Use it from this shell with:  eval "$({shlex.quote(sys.argv[0])} dev env)"')
    return 0


def _dev_down(stack: DevStack) -> int:
    stack.down()
    print(f"herald dev stack stopped (its data stays in {stack.home}).")
    return 0


def _dev_status(stack: DevStack) -> int:
    rows = stack.status_rows()
    width = max(len(r[0]) for r in rows)
    for name, state, pid, log in rows:
        print(f"{name:<{width}}  {state:<19} pid {pid:<8} log {log}")
    print(f"kubeconfig: {stack.cluster.kubeconfig}")
    print(f"operator: http://127.0.0.1:{stack.ports['operator_health']}/healthz, "
          f"http://127.0.0.1:{stack.ports['operator_metrics']}/metrics")
    for key, value in stack.env().items():
        if key != "KUBECONFIG":
            print(f"{key}: {value}")
    return 0 if all(r[1] == "healthy" for r in rows) else 1


def _dev_env(stack: DevStack) -> int:
    print(stack.env_script())
    return 0


def _demo(stack: DevStack, recipients: int) -> int:
    from herald_dev import demo  # rich and the samples: only the demo needs them

    return demo.main(stack, recipients)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="herald",
        description="Deliver notification campaigns once, inside their windows.")
    commands = top.add_subparsers(dest="command", required=True)
    operator = commands.add_parser(
        "operator", help="run the operator (the Deployment's entry point)",
        description="Reconcile NotificationCampaigns into CronJobs, RBAC and status. "
                    "Uses the in-cluster configuration, or KUBECONFIG.")
    operator_main.add_arguments(operator)
    operator.set_defaults(run=operator_main.run)
    job = commands.add_parser(
        "job", help="run one delivery run (the CronJob pods' entry point)",
        description="Deliver one campaign's pending messages, then exit. Reads the campaign "
                    "from the API (in-cluster configuration, or KUBECONFIG).")
    job_main.add_arguments(job)
    job.set_defaults(run=job_main.run)
    dev = commands.add_parser(
        "dev", help="a whole local stack without Docker",
        description="A local Kubernetes control plane, Redis, an SMTP capture server, the "
                    "operator and a local executor for job pods, kept in $HERALD_DEV_HOME "
                    "(default ~/.local/share/herald/dev).")
    actions = dev.add_subparsers(dest="action", required=True)
    actions.add_parser("up", help="start what is not running; return once all is healthy") \
        .set_defaults(run=_dev_up)
    actions.add_parser("down", help="stop what `up` started").set_defaults(run=_dev_down)
    actions.add_parser("status", help="each component's health; exit 1 unless all healthy") \
        .set_defaults(run=_dev_status)
    actions.add_parser("env", help='export lines: eval "$(herald dev env)"') \
        .set_defaults(run=_dev_env)
    demo = commands.add_parser(
        "demo", help="deliver the sample campaign on the local stack and show it",
        description="Bring the local stack up, reset the demo's namespace, ledger and mail, "
                    "deliver manifests/samples/ through CronJob → Job → Pod, show that a "
                    "second run sends nothing and that suspend stops delivery. The stack "
                    "keeps running; `herald dev down` stops it.")
    demo.add_argument("--recipients", type=int, default=10_000,
                      help="how many synthetic recipients (default 10000, the sample)")
    demo.set_defaults(run=lambda stack, args: _demo(stack, args.recipients))
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in ("operator", "job"):
        return int(args.run(args))
    try:
        from herald_dev.stack import DevStack, dev_home
    except ImportError as err:
        print(f"herald {args.command}: needs the dev extras (pip install 'herald[dev]'): {err}",
              file=sys.stderr)
        return 2
    try:
        if args.command == "demo":
            return int(args.run(DevStack(dev_home()), args))
        return int(args.run(DevStack(dev_home())))
    except (RuntimeError, TimeoutError, FileNotFoundError) as err:
        print(f"herald: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
