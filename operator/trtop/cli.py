"""``trtop``: one command, several programs (operator, convert, serve, dev cluster).

Each subcommand lives in its own package and is imported only when chosen, so the
server image never imports TensorFlow and the converter never imports kopf.
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
    "dev": ("trtop.devcluster.cli", "the local dev cluster: `trtop dev cluster up|down|status`"),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"} or args[0] not in COMMANDS:
        print("usage: trtop <command> [options]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<10} {help_}")
        return 0 if args and args[0] in {"-h", "--help"} else 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    sys.exit(main())
