"""Running the HTTP app under uvicorn (`twin serve`)."""

from __future__ import annotations

import uvicorn

from layers.settings import StoreSettings
from twin.app import create_app
from twin.settings import ServerSettings


def serve(settings: ServerSettings, store_settings: StoreSettings) -> None:
    """Serve the store until interrupted; the catalog is loaded before the first request."""
    app = create_app(settings, store_settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
