"""``python -m sidecar`` (or ``outbox-sidecar``): serve the sidecar on SIDECAR_HOST:SIDECAR_PORT.

Exit codes: ``0`` stopped by SIGTERM/SIGINT, ``2`` a bad or missing setting (named), ``1``
anything else (including a port already in use).
"""

from __future__ import annotations

import signal
import sys


def main() -> None:
    """Console entry point."""
    # Imported here, not above: every extraction process runs this module (as
    # ``__mp_main__``, see anyio.to_process), and should not pay for the web server.
    import uvicorn

    from outbox.primitives.errors import ConfigurationError
    from outbox.primitives.logs import configure_logging
    from outbox.runtime.settings import load_settings
    from sidecar.app import create_app
    from sidecar.settings import SidecarSettings

    try:
        settings = load_settings(SidecarSettings)
    except ConfigurationError as exc:
        print(f"outbox-sidecar: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_format)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.sidecar_host,
            port=settings.sidecar_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    )
    # uvicorn stops gracefully on SIGTERM/SIGINT, then re-raises the signal to whatever
    # handler was there before it: make that a no-op, so a requested stop exits 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    server.run()
    sys.exit(0 if server.started else 1)


if __name__ == "__main__":
    main()
