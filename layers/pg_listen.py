"""Listening to a PostgreSQL channel on a thread: what the PostGIS store (its change log) and
the key ring in the database (its keys) both do to learn at once that another process
changed something."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg

POLL_S = 0.5
"""How often a listener looks whether it is being stopped."""
CONNECT_TIMEOUT_S = 5


class Listener:
    """A thread `LISTEN`ing on `channel` of the database at `url` with a connection of its
    own: `heard(db)` is called once on every (re)connection (for what was missed while not
    listening) and once per notification, one at a time (the connection is free for `heard`'s
    own queries). A lost connection is made again, waiting longer each time (0.1 s doubling
    up to 5 s). `listening` says whether it is connected now."""

    def __init__(
        self, url: str, channel: str, heard: Callable[[psycopg.Connection], None], name: str
    ) -> None:
        self._url, self._channel, self._heard = url, channel, heard
        self.listening = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pause = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                ) as db:
                    db.execute(f"LISTEN {self._channel}")
                    self.listening = True
                    pause = 0.1
                    self._heard(db)
                    while not self._stop.is_set():
                        if list(db.notifies(timeout=POLL_S, stop_after=1)):
                            self._heard(db)
            except psycopg.Error:
                pass
            self.listening = False
            self._stop.wait(pause)
            pause = min(pause * 2, 5.0)

    def stop(self) -> None:
        """Stop listening (waits for the thread)."""
        self._stop.set()
        self._thread.join(POLL_S * 2 + 1)
