"""``trtop``: one command, several programs (operator, convert, serve, dev cluster).

Each subcommand lives in its own package and is imported only when chosen, so the
server image never imports TensorFlow and the converter never imports kopf. ``dev`` lives in
the separate package ``trtop_dev`` (dev cluster, real node, image builds, demo), which no image carries.
"""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module with main(argv) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("trtop.handlers.cli", "run the operator (kopf) against the current cluster"),
    "convert": ("trtop.convert.cli", "build one verified engine from a model (the build Job's program)"),
    "serve": ("trtop.serve.cli", "serve a model over the Open Inference Protocol v2"),
    "store": ("trtop.handlers.gc", "engine store maintenance: `trtop store gc --dry-run`"),
    "dev": ("trtop_dev.devcluster.cli", "the local dev cluster: `trtop dev cluster up|down|status`"),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"} or args[0] not in COMMANDS:
        print("usage: trtop <command> [options]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<10} {help_}")
        return 0 if args and args[0] in {"-h", "--help"} else 2
    name = COMMANDS[args[0]][0]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # The dev tooling (trtop_dev) is left out of the images on purpose: say so, not a traceback.
        if exc.name is None or not name.startswith(exc.name):
            raise
        print(f"trtop {args[0]}: {name.split('.')[0]} is not installed here (the images ship only the product; "
              "use a checkout of the repository for the dev tools)", file=sys.stderr)
        return 2
    return int(module.main(args[1:]))


if __name__ == "__main__":
    sys.exit(main())
