"""``trtop serve``: parse settings (flags over ``TRTOP_*`` variables) and run the server.

Dispatched by ``trtop.cli``; ``main(argv)`` returns the exit code (0 after a clean drain,
1 when the model failed to load, 2 when no engine fits this device or nothing was given).
"""
from __future__ import annotations

import sys

from trtop.serve.server import run_server
from trtop.serve.settings import parse_settings


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    return run_server(settings)


if __name__ == "__main__":
    sys.exit(main())
