"""`herald job`: one delivery run of one campaign."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from zoneinfo import ZoneInfoNotFoundError

from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException
from pydantic import ValidationError
from redis.exceptions import RedisError

from herald_api.kubeclient import api_client
from herald_jobs import logs
from herald_jobs.audience import AudienceError
from herald_jobs.kube import CampaignSource
from herald_jobs.worker import NotDurable, SpecProblem, run_job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--namespace", default=env("HERALD_NAMESPACE"),
                        help="the campaign's namespace (HERALD_NAMESPACE)")
    parser.add_argument("--campaign", default=env("HERALD_CAMPAIGN"),
                        help="the campaign's name (HERALD_CAMPAIGN)")
    parser.add_argument("--redis-url", default=env("HERALD_REDIS_URL"),
                        help="the ledger's Redis (HERALD_REDIS_URL)")
    parser.add_argument("--accept-unverified-redis", action="store_true",
                        default=env("HERALD_ACCEPT_UNVERIFIED_REDIS", "") in ("1", "true"),
                        help="send even when Redis's configuration cannot be read (a managed "
                             "Redis known to be durable; HERALD_ACCEPT_UNVERIFIED_REDIS=1)")


def run(args: argparse.Namespace) -> int:
    missing = [flag for flag, value in (("--namespace", args.namespace),
                                        ("--campaign", args.campaign),
                                        ("--redis-url", args.redis_url)) if not value]
    if missing:
        print(f"herald job: {', '.join(missing)} required (or their environment variables)",
              file=sys.stderr)
        return 2
    logs.configure()
    try:
        source = CampaignSource(api_client(), args.namespace, args.campaign)
        return asyncio.run(run_job(source, args.redis_url, args.accept_unverified_redis))
    except NotDurable as err:
        return _fail(3, f"refusing to send: {err}")
    except (AudienceError, ValidationError, SpecProblem) as err:
        return _fail(4, str(err))
    except ZoneInfoNotFoundError as err:
        return _fail(4, f"spec.timeZone: unknown time zone: {err}")
    except ConfigException as err:
        return _fail(5, f"no Kubernetes configuration (in-cluster, or KUBECONFIG): {err}")
    except ApiException as err:
        if err.status == 404:
            return _fail(4, f"campaign {args.namespace}/{args.campaign} not found")
        return _fail(5, f"Kubernetes API: {err.status} {err.reason}")
    except (RedisError, ValueError) as err:
        return _fail(5, f"ledger Redis at {args.redis_url!r}: {err}")


def _fail(code: int, message: str) -> int:
    print(f"herald job: {message}", file=sys.stderr)
    return code
