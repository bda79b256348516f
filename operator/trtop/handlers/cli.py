"""``trtop operator``: run the kopf operator (cluster-wide, or in ``TRTOP_NAMESPACES``)."""
from __future__ import annotations

import argparse
import asyncio
import random
import sys

import kopf

from trtop.config import Settings, SettingsError

# "random" priorities are drawn below this; a developer's local `--priority 1000000` wins.
RANDOM_PRIORITY_MAX = 999_999


def peering_priority(value: str) -> int:
    """kopf peering priority: an integer, or ``random`` (one draw per process).

    kopf pauses every operator of a peering that sees a live peer of the same priority, so
    replicas of one Deployment need distinct priorities: the highest works, the others wait.
    """
    if value == "random":
        return random.SystemRandom().randint(1, RANDOM_PRIORITY_MAX)
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither an integer nor 'random'") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtop operator", description=__doc__)
    parser.add_argument("--standalone", action="store_true",
                        help="no peering (one replica); by default replicas coordinate through kopf peering")
    parser.add_argument("--peering", default="trtop", help="kopf peering object name")
    parser.add_argument("--priority", default=0, type=peering_priority,
                        help="kopf peering priority: an integer, or 'random' for replicas of one Deployment "
                             f"(drawn in 1..{RANDOM_PRIORITY_MAX}); the live peer with the highest works")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                        help="liveness/readiness endpoint URL (empty to disable)")
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"trtop operator: {e}", file=sys.stderr)
        return 2
    import trtop.handlers.main  # noqa: F401 - registers the handlers
    from trtop.k8s import peering

    peering.configure(standalone=args.standalone, name=args.peering, priority=args.priority,
                      namespaces=settings.namespaces)

    kopf.configure(verbose=args.verbose)
    asyncio.run(kopf.operator(
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        standalone=args.standalone,
        peering_name=None if args.standalone else args.peering,  # a name makes peering mandatory
        priority=args.priority,
        liveness_endpoint=args.liveness or None,
    ))
    return 0
