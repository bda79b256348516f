"""``trtop dev``: the local dev cluster from the command line.

    trtop dev cluster up [--name trtop-dev] [--pools FILE] [--provider kwok|kind] [--no-real-node] [--dry-run]
    trtop dev cluster down [--name trtop-dev]
    trtop dev cluster status [--name trtop-dev]
    trtop dev cluster kubeconfig [--name trtop-dev]
    trtop dev nodes apply [--name trtop-dev] [--pools FILE] [--no-prune]
    trtop dev demo [--name trtop-dev] [--keep]                          (trtop_dev.devcluster.demo)

Dispatched from ``trtop.cli``; the work happens in ``trtop_dev.devcluster.cluster``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trtop_dev.devcluster import cluster, workspace
from trtop_dev.devcluster.kind import KindError
from trtop_dev.devcluster.kubectl import KubectlError
from trtop_dev.devcluster.kwok import KwokError
from trtop_dev.devcluster.containerd import ContainerdError
from trtop_dev.devcluster.pools import PoolsError
from trtop_dev.devcluster.realnode import RealNodeError
from trtop_dev.devcluster.tools import ToolsError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtop dev", description="The local dev cluster (docs/dev-cluster.md).")
    groups = parser.add_subparsers(dest="group", required=True)

    def named(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--name", default=workspace.DEFAULT_NAME, help="cluster name (default %(default)s)")
        return p

    cl = groups.add_parser("cluster", help="start, stop or inspect the dev cluster").add_subparsers(
        dest="action", required=True)
    up = named(cl.add_parser("up", help="build the tools if needed, start the cluster, create the nodes"))
    up.add_argument("--pools", type=Path, help="pools YAML (default: trtop_dev/devcluster/pools.yaml)")
    up.add_argument("--provider", choices=cluster.PROVIDERS, default="kwok",
                    help="kwok (no Docker; fake nodes) or kind (needs Docker)")
    up.add_argument("--no-real-node", dest="real_node", action="store_false",
                    help="start no kubelet (the real node: containerd, runc, CNI); only kwok nodes")
    up.add_argument("--dry-run", action="store_true", help="print what would run; start and download nothing")
    named(cl.add_parser("down", help="stop every process of the cluster and delete its state"))
    named(cl.add_parser("status", help="say what runs; exit 0 only when the cluster is ready"))
    named(cl.add_parser("kubeconfig", help="print the kubeconfig path"))

    nodes = groups.add_parser("nodes", help="fake nodes of a running cluster").add_subparsers(
        dest="action", required=True)
    apply = named(nodes.add_parser("apply", help="make the cluster's pool nodes match a pools file"))
    apply.add_argument("--pools", type=Path, help="pools YAML (default: trtop_dev/devcluster/pools.yaml)")
    apply.add_argument("--no-prune", dest="prune", action="store_false",
                       help="keep pool nodes that are not in the file")
    groups.add_parser("demo", add_help=False,
                      help="the demo: cluster up, Helm install, a real model built, served and scaled in real pods")
    return parser


def main(argv: list[str]) -> int:
    if argv[:1] == ["demo"]:  # the whole path, from kubectl apply to an answer (README)
        from trtop_dev.devcluster.demo import main as demo_main

        return demo_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.group == "cluster" and args.action == "up":
            cluster.up(args.name, pools_file=args.pools, provider=args.provider, dry_run=args.dry_run,
                       real_node=args.real_node)
        elif args.group == "cluster" and args.action == "down":
            cluster.down(args.name)
        elif args.group == "cluster" and args.action == "status":
            running, report = cluster.status(args.name)
            print(report)
            return 0 if running else 1
        elif args.group == "cluster" and args.action == "kubeconfig":
            print(workspace.kubeconfig_path(workspace.repo_root(), args.name))
        elif args.group == "nodes" and args.action == "apply":
            cluster.apply_nodes(args.name, pools_file=args.pools, prune=args.prune)
    except (PoolsError, ToolsError, KwokError, KindError, KubectlError, workspace.WorkspaceError,
            ContainerdError, RealNodeError, RuntimeError) as err:
        print(f"trtop dev: {err}", file=sys.stderr)
        return 1
    return 0
