"""``trtop dev runner``: the local kubelet stand-in from the command line.

    trtop dev runner [--name trtop-dev | --kubeconfig FILE] [--node-name local-runner]
                     [--pvc-root DIR] [--work-dir DIR] [--cpu 32] [--memory 128Gi] [--pods 110]
                     [--label K=V]... [--taint K=V:EFFECT]... [--env K=V]... [--no-delete-node-on-exit] [--verbose]

Runs until SIGINT/SIGTERM, then stops every process it started and deletes its node
(``--no-delete-node-on-exit``: marks it NotReady). Dispatched from ``trtop_dev.devcluster.cli``.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from trtop_dev.devcluster import workspace
from trtop_dev.localrunner.kube import KubeError
from trtop_dev.localrunner.node import NodeShape, parse_taint
from trtop_dev.localrunner.runner import DEFAULT_NODE, LocalRunner


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: write KEY=VALUE")
        out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trtop dev runner",
        description="Play the kubelet for one node of the dev cluster: its pods run as local processes "
                    "(demo and tests only; docs/local-runner.md).")
    p.add_argument("--name", default=workspace.DEFAULT_NAME, help="dev cluster name (default %(default)s)")
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig of the cluster (default: the dev cluster's)")
    p.add_argument("--node-name", default=DEFAULT_NODE, help="the node to register and run (default %(default)s)")
    p.add_argument("--pvc-root", type=Path, help="folder of claims not bound to a hostPath volume "
                   "(default <repo>/.work/local-runner/pvc; one subfolder per <namespace>/<claim>)")
    p.add_argument("--work-dir", type=Path, help="logs/ and per-pod folders (default <repo>/.work/local-runner)")
    p.add_argument("--cpu", default="32", help="advertised cpu capacity (not enforced; default %(default)s)")
    p.add_argument("--memory", default="128Gi", help="advertised memory capacity (not enforced; default %(default)s)")
    p.add_argument("--pods", type=int, default=110, help="advertised pod capacity (default %(default)s)")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="an extra node label (repeatable)")
    p.add_argument("--taint", action="append", default=[], metavar="K=V:EFFECT", help="a node taint (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="a variable for every process, below the pod's own env (repeatable)")
    p.add_argument("--delete-node-on-exit", dest="delete_node", action=argparse.BooleanOptionalAction, default=True,
                   help="on exit delete the node (default), or with --no-delete-node-on-exit mark it NotReady")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    try:
        kubeconfig = args.kubeconfig or workspace.kubeconfig_path(workspace.repo_root(), args.name)
        if not Path(kubeconfig).is_file():
            raise ValueError(f"no kubeconfig at {kubeconfig}: start the dev cluster (`trtop dev cluster up`) "
                             "or pass --kubeconfig")
        shape = NodeShape(cpu=args.cpu, memory=args.memory, pods=args.pods, labels=_pairs(args.label, "--label"),
                          taints=[parse_taint(t) for t in args.taint])
        runner = LocalRunner(kubeconfig, node_name=args.node_name, pvc_root=args.pvc_root, work_dir=args.work_dir,
                             shape=shape, env=_pairs(args.env, "--env"), delete_node_on_exit=args.delete_node)
        runner.start()
    except (ValueError, KubeError, workspace.WorkspaceError) as err:
        print(f"trtop dev runner: {err}", file=sys.stderr)
        return 1

    requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"local runner: node {args.node_name} is Ready; pod logs in {runner.work_dir / 'logs'}; Ctrl-C stops it",
          flush=True)
    while not requested.wait(0.5):
        pass
    logging.getLogger("trtop_dev.localrunner").info("stopping every pod process and leaving the cluster")
    runner.stop()
    return 0
