"""``trtop operator``: run the kopf operator (cluster-wide, or in ``TRTOP_NAMESPACES``)."""
from __future__ import annotations

import argparse
import asyncio

import kopf

from trtop.config import Settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trtop operator", description=__doc__)
    parser.add_argument("--standalone", action="store_true",
                        help="no peering (one replica); by default replicas coordinate through kopf peering")
    parser.add_argument("--peering", default="trtop", help="kopf peering object name")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                        help="liveness/readiness endpoint URL (empty to disable)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    import trtop.handlers.main  # noqa: F401 - registers the handlers

    kopf.configure(verbose=args.verbose)
    asyncio.run(kopf.operator(
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        standalone=args.standalone,
        peering_name=args.peering,
        liveness_endpoint=args.liveness or None,
    ))
    return 0
