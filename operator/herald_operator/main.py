"""`herald operator`: kopf with peering, a resync loop, health and metrics endpoints."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import random
import socket
import sys
from typing import Any, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException
from prometheus_client import start_http_server

from herald_api import GROUP
from herald_api.kubeclient import api_client
from herald_operator.builders import JobSettings
from herald_operator.kube import Kube
from herald_operator.reconcile import reconcile_all

log = logging.getLogger("herald.operator")
REQUIRED_CRDS = (f"notificationcampaigns.{GROUP}", f"deliveryhalts.{GROUP}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1",
                        help="address of the health and metrics endpoints (in a pod: 0.0.0.0)")
    parser.add_argument("--health-port", type=int, default=8080, help="serves /healthz")
    parser.add_argument("--metrics-port", type=int, default=9090, help="serves /metrics")
    parser.add_argument("--peering", default="herald",
                        help="the ClusterKopfPeering through which replicas agree who acts")
    parser.add_argument("--priority", type=int, default=None,
                        help="peering priority; the highest live one acts (default: random, "
                             "so that two replicas never tie and freeze each other)")
    parser.add_argument("--standalone", action="store_true",
                        help="no peering: for a single replica only")
    parser.add_argument("--resync-seconds", type=float, default=15.0,
                        help="how often every campaign is checked again (drift, windows)")
    parser.add_argument("--namespace", dest="namespaces", action="append", default=[],
                        metavar="NS", help="watch only this namespace (repeat for several; "
                        "default: the whole cluster); replicas then agree through a "
                        "KopfPeering in each")


def _check_crds(api: client.ApiClient, namespaced: bool) -> str | None:
    ext = client.ApiextensionsV1Api(api)
    peering = "kopfpeerings.kopf.dev" if namespaced else "clusterkopfpeerings.kopf.dev"
    for name in (*REQUIRED_CRDS, peering):
        try:
            ext.read_custom_resource_definition(name)
        except ApiException as err:
            if err.status == 404:
                return (f"the CRD {name} is not installed: kubectl apply --server-side "
                        f"-f manifests/crds/ -f manifests/rbac/ -f manifests/policies/")
            if err.status in (401, 403):
                return (f"not allowed to read the CRD {name} ({err.status} {err.reason}): "
                        f"the operator's ServiceAccount needs the ClusterRole in "
                        f"manifests/rbac/operator.yaml")
            raise
    return None


def _ensure_peering(api: client.ApiClient, name: str, namespaces: list[str]) -> None:
    """The peering object(s) kopf's replicas meet in: one cluster-wide, or one per
    watched namespace."""
    custom = client.CustomObjectsApi(api)
    body = {"apiVersion": "kopf.dev/v1", "metadata": {"name": name}}
    where: list[str | None] = [*namespaces] or [None]
    for namespace in where:
        try:
            if namespace is None:
                custom.create_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings",
                    {**body, "kind": "ClusterKopfPeering"})
            else:
                custom.create_namespaced_custom_object(
                    "kopf.dev", "v1", namespace, "kopfpeerings", {**body, "kind": "KopfPeering"})
        except ApiException as err:
            if err.status != 409:  # it exists
                raise


def is_leader(api: client.ApiClient, peering: str, identity: str, now: dt.datetime,
              namespaces: list[str] | None = None) -> bool:
    """Whether this replica has the highest priority among the live peers (of the first
    watched namespace, when namespaced)."""
    custom = client.CustomObjectsApi(api)
    try:
        if namespaces:
            found = custom.get_namespaced_custom_object(
                "kopf.dev", "v1", namespaces[0], "kopfpeerings", peering)
        else:
            found = custom.get_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", peering)
        obj = cast(dict[str, Any], found)
    except ApiException:
        return False
    best: tuple[int, str] | None = None
    for peer, info in (obj.get("status") or {}).items():
        try:
            seen = dt.datetime.fromisoformat(str(info["lastseen"]))
            if seen.tzinfo is None:
                seen = seen.replace(tzinfo=dt.UTC)
            alive = seen + dt.timedelta(seconds=float(info.get("lifetime", 60))) > now
            priority = int(info.get("priority", 0))
        except (KeyError, TypeError, ValueError):
            continue
        if alive and (best is None or (priority, peer) > best):
            best = (priority, peer)
    return best is not None and best[1] == identity


async def _resync(kube: Kube, settings: JobSettings, args: argparse.Namespace,
                  identity: str) -> None:
    """Every campaign again, now and then: repairs drift and moves window status along."""
    while True:
        await asyncio.sleep(args.resync_seconds)
        now = dt.datetime.now(dt.UTC)
        try:
            leader = args.standalone or await asyncio.to_thread(
                is_leader, kube.api, args.peering, identity, now, args.namespaces)
            if leader:
                await asyncio.to_thread(reconcile_all, kube, settings)
        except Exception:
            log.exception("resync failed")


async def _run(args: argparse.Namespace, api: client.ApiClient) -> None:
    import kopf

    kube = Kube(api, args.namespaces)
    settings = JobSettings.from_env()
    priority = args.priority if args.priority is not None else random.randint(1, 1_000_000)
    identity = f"{socket.gethostname()}-{os.getpid()}"
    start_http_server(args.metrics_port, addr=args.listen)
    kube.ensure_halt_object()
    if not args.standalone:
        _ensure_peering(api, args.peering, args.namespaces)
    log.info("operator starting", extra={"identity": identity, "priority": priority})
    operator = asyncio.create_task(kopf.operator(
        clusterwide=not args.namespaces,
        namespaces=args.namespaces,
        standalone=args.standalone,
        peering_name=args.peering,
        priority=priority,
        identity=identity,  # type: ignore[arg-type]
        liveness_endpoint=f"http://{args.listen}:{args.health_port}/healthz",
        memo=kopf.Memo(kube=kube, settings=settings),
    ))
    resync = asyncio.create_task(_resync(kube, settings, args, identity))
    try:
        await operator
    finally:
        resync.cancel()


def run(args: argparse.Namespace) -> int:
    # kopf and the handlers only here: `herald job` shares the CLI and starts faster without.
    import kopf

    from herald_operator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(log_format=kopf.LogFormat.JSON, verbose=False)
    try:
        api = api_client()
        problem = _check_crds(api, bool(args.namespaces))
    except ConfigException as err:
        problem = f"no Kubernetes configuration (in-cluster, or KUBECONFIG): {err}"
    except (ApiException, urllib3.exceptions.HTTPError) as err:
        problem = f"cannot reach the Kubernetes API: {err}"
    if problem:
        print(f"herald operator: {problem}", file=sys.stderr)
        return 2
    asyncio.run(_run(args, api))
    return 0

