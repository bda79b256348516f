"""``trtop serve``: parse settings (flags over ``TRTOP_*`` variables) and run the server, in one process
or as an engine process with front-end processes (``processes.frontend_count``).

Dispatched by ``trtop.cli``; ``main(argv)`` returns the exit code (0 after a clean drain,
1 when the model failed to load, 2 when no engine fits this device or nothing was given).
"""
from __future__ import annotations

import logging
import os
import sys

from trtop.serve.errors import StartupError
from trtop.serve.processes import frontend_count
from trtop.serve.server import create_server
from trtop.serve.settings import ServeSettings, parse_settings
from trtop.serve.supervisor import run_supervised

log = logging.getLogger(__name__)

EXIT_NO_ENGINE = 2


def run_server(settings: ServeSettings) -> int:
    """Serve until SIGTERM/SIGINT; the process exit code."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        if frontend_count(settings) > 0:
            return _exit(*run_supervised(settings))
        server = create_server(settings)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_NO_ENGINE
    server.run()
    return _exit(server.exit_code, server.forced)


def _exit(code: int, forced: bool) -> int:
    """``code``; after a forced stop (a batch stuck in the backend, a second signal) a compute thread may
    still run, and the interpreter would wait for it at exit: the process exits at once instead."""
    if forced:
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    return run_server(settings)


if __name__ == "__main__":
    sys.exit(main())
