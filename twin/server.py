"""Running the HTTP app under uvicorn (`twin serve`), in one process or several.

The catalog (every layer in memory) and its tile arrays and spatial indexes are built once,
before the first request. With `workers > 1` they are built in a supervising process that
then forks the workers, so all of them share those arrays copy-on-write (a second worker
costs little memory and no start-up time). Each worker has its own listening socket in one
SO_REUSEPORT group, so the kernel spreads connections over the workers, and its own tile
cache, filled also by the tiles the other workers render (`twin.peers`).

The supervising process (`Supervisor`) restarts a worker that dies without being asked to,
after a back-off that grows while the workers of its slot keep dying quickly (`Backoff`). The
replacement is forked from the supervisor, which still holds the loaded catalog, so it starts
in milliseconds and shares the same pages; it listens in the same SO_REUSEPORT group and is
linked to every live worker, which send it the tiles they hold. The other workers serve
throughout. On SIGTERM or SIGINT the supervisor stops restarting, asks every worker to stop
(each lets its requests in flight finish for up to `GRACE_S`) and kills any worker still
alive after `KILL_AFTER_S`.

With several workers the server serves a read-only snapshot of the store: a change made
through one worker (an edit, a reload) reaches only that worker's catalog, and the other
workers keep serving what was loaded at start. Use one worker (the default) where the twin
is edited live. `/metrics` counts per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import math
import mmap
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from layers.catalog import Catalog
from layers.models import StateRun
from layers.settings import StoreSettings, open_catalog, open_store
from twin.app import create_app
from twin.peers import TilePeers, control_pair, link, send_link
from twin.protocol import JsonErrorsProtocol
from twin.settings import ServerSettings
from twin.warmup import warm

BACKLOG = 2048
GRACE_S = 10
"""Seconds a stopping worker gives the requests in flight to finish before it cancels them."""
KILL_AFTER_S = 15.0
"""Seconds after asking the workers to stop past which the supervisor kills any still alive."""
BOOT_FAILED = 3
"""Exit code of a worker that could not start serving (uvicorn's own startup failure too)."""


SWITCH_S = 0.001
"""The interpreter's thread switch interval in a serving process (see `serve`)."""


def load_catalog(store_settings: StoreSettings) -> Catalog:
    """The catalog of the store with every layer's tile arrays and spatial index built."""
    return warm(open_catalog(store_settings, open_store(store_settings, create=False)))


def _uvicorn_options(settings: ServerSettings, access_log: bool, log_level: str) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": log_level,
        "access_log": access_log,
        "proxy_headers": True,
        "server_header": False,
        "timeout_graceful_shutdown": GRACE_S,
        "http": JsonErrorsProtocol,
        "loop": settings.loop,
    }


def serve(
    settings: ServerSettings,
    store_settings: StoreSettings,
    *,
    workers: int = 1,
    access_log: bool = True,
    log_level: str = "info",
) -> None:
    """Serve the store until interrupted (SIGINT or SIGTERM), in `workers` processes."""
    catalog = load_catalog(store_settings)
    options = _uvicorn_options(settings, access_log, log_level)
    # A thread holding the GIL gives it up after this long when another waits for it: the
    # event loop answering a cached tile waits on a follower or a render at most 1 ms, not
    # Python's default 5 ms.
    sys.setswitchinterval(SWITCH_S)
    if workers <= 1:
        # The loaded layers never become garbage: out of the collector's way, a full
        # collection does not walk them (measured: 75–95 ms pauses every few seconds under
        # load on the demo district, none after).
        gc.collect()
        gc.freeze()
        try:
            app = create_app(settings, store_settings, catalog=catalog)
            server = app.state.server = uvicorn.Server(uvicorn.Config(app, **options))
            server.run()
        finally:
            catalog.store.close()
        return
    _serve_workers(settings, store_settings, catalog, workers, options)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket in the SO_REUSEPORT group of `host:port`.

    Made with protocol IPPROTO_TCP so that asyncio sets TCP_NODELAY on the connections it
    accepts (uvicorn#3149: with protocol 0 it does not, and every keep-alive request waits
    for a delayed ACK); uvloop sets it regardless."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _port_is_free(host: str, port: int) -> None:
    """Raise OSError when something listens on `host:port`, even a SO_REUSEPORT group that
    our listeners would silently join (an earlier twin server still running)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _serve_workers(
    settings: ServerSettings,
    store_settings: StoreSettings,
    catalog: Catalog,
    n: int,
    options: dict[str, Any],
) -> None:
    sockets: list[socket.socket] = []
    try:
        if settings.port:
            _port_is_free(settings.host, settings.port)
        for _ in range(n):
            # Port 0: the first listener picks a free port and the others join it.
            port = sockets[0].getsockname()[1] if sockets else settings.port
            sockets.append(listener(settings.host, port))
    except OSError:
        for s in sockets:
            s.close()
        catalog.store.close()
        raise
    port = sockets[0].getsockname()[1]
    # No database connection may cross a fork: each worker opens its own.
    catalog.store.close()
    # Objects loaded so far stay out of the collector's way, so the pages holding them
    # stay shared with the workers instead of being copied when a collection walks them.
    gc.freeze()
    figures = PoolFigures.shared()

    def work(sock: socket.socket, links: list[socket.socket], control: socket.socket) -> int:
        return _worker(settings, store_settings, catalog, options, figures, sock, links, control)

    supervisor = Supervisor(n, work, lambda: listener(settings.host, port), figures)
    pids = supervisor.start(sockets)
    print(
        f"twin: serving http://{settings.host}:{port} with {n} workers "
        f"(pids {', '.join(map(str, pids))})",
        flush=True,
    )
    if supervisor.wait():
        raise SystemExit(1)


def _worker(
    settings: ServerSettings,
    store_settings: StoreSettings,
    catalog: Catalog,
    options: dict[str, Any],
    figures: PoolFigures,
    sock: socket.socket,
    peer_sockets: list[socket.socket],
    control: socket.socket,
) -> int:
    """Serve on `sock` in this forked worker process until asked to stop; the exit code."""
    # A stop asked for while the worker is still starting is kept, and honoured once it serves.
    asked: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: asked.append(signum))
    try:
        catalog.store = open_store(store_settings, create=False)
    except Exception as exc:
        print(f"twin: worker {os.getpid()} cannot open the store: {exc}", file=sys.stderr)
        return BOOT_FAILED
    try:
        app = create_app(settings, store_settings, catalog=catalog)
        app.state.metrics.watch_workers(lambda: figures.restarts, lambda: figures.live)
        config = uvicorn.Config(app, **options)
        server = app.state.server = uvicorn.Server(config)
        # A stop asked for before uvicorn listens to signals, or after it has shut down
        # (it re-raises the signal that stopped it): shut down, or let the worker report.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: setattr(server, "should_exit", True))
        server.should_exit = bool(asked)
        # Without its supervisor a worker stops: a new supervisor could not take the port.
        peers = TilePeers(peer_sockets, control, lambda: signal.raise_signal(signal.SIGTERM))
        app.state.tiles.peers = peers

        # Another worker wrote to the store: apply it now (the follower exists once the app
        # has started).
        def news() -> None:
            follower = getattr(app.state, "follower", None)
            if follower is not None:
                follower.wake()

        peers.on_news = news

        # Another worker wrote readings: told to this worker's event streams now (off the
        # event loop: their boxes are looked up), applied when the follower's step comes.
        def written(runs: list[StateRun]) -> None:
            follower = getattr(app.state, "follower", None)
            if follower is None or not follower.running or not runs:
                return
            follower.heard(max(r.last for r in runs))
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, app.state.feed.written, runs)

        peers.on_written = written

        async def main() -> None:
            await peers.start(app.state.tiles.cache)
            try:
                await server.serve(sockets=[sock])
            finally:
                await peers.close()
                print(
                    f"twin: worker {os.getpid()} served {server.server_state.total_requests} "
                    f"requests; tiles: {peers.sent} sent to, {peers.received} taken from "
                    f"the other workers, {peers.warmed} sent to workers that joined later",
                    file=sys.stderr,
                    flush=True,
                )

        with (
            contextlib.suppress(SystemExit),
            asyncio.Runner(loop_factory=config.get_loop_factory()) as runner,
        ):
            runner.run(main())  # SystemExit: uvicorn's, when the app could not start
    finally:
        catalog.store.close()
    return 0 if server.started else BOOT_FAILED


class PoolFigures(ctypes.Structure):
    """Figures of the worker pool that the supervisor writes and every worker reads (for
    `/metrics`), in memory shared across the fork (`shared()`, made before the first one)."""

    _fields_ = [("restarts", ctypes.c_int64), ("live", ctypes.c_int64)]
    restarts: int
    """Workers started in place of ones that died."""
    live: int
    """Workers alive now."""

    @classmethod
    def shared(cls) -> PoolFigures:
        """Zeroed figures in an anonymous shared mapping, which forked workers see change."""
        return cls.from_buffer(mmap.mmap(-1, ctypes.sizeof(cls)))


@dataclass
class Backoff:
    """The wait before restarting a worker: `first` seconds, doubled after each worker of the
    same slot that died within `settle` seconds of its start, up to `longest`; back to `first`
    once one has lived `settle` seconds."""

    first: float = 0.1
    longest: float = 10.0
    settle: float = 30.0
    quick_deaths: int = 0
    """Workers of the slot in a row that died within `settle` seconds."""

    def delay(self, lived: float) -> float:
        """The wait before restarting after a worker that lived `lived` seconds died."""
        if lived >= self.settle:
            self.quick_deaths = 0
        wait = min(self.first * 2.0 ** min(self.quick_deaths, 64), self.longest)
        self.quick_deaths += 1
        return wait


@dataclass
class _Slot:
    """A worker's place in the pool: its live worker (pid 0: none), the supervisor's end of
    its control socket, and when a dead worker's replacement is due."""

    backoff: Backoff = field(default_factory=Backoff)
    pid: int = 0
    control: socket.socket | None = None
    started: float = 0.0
    due: float | None = None


def _log(message: str) -> None:
    print(f"twin: {message}", file=sys.stderr, flush=True)


def _death(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    if code == BOOT_FAILED:
        return f"could not start (exit code {code})"
    return f"exited with code {code}"


class Supervisor:
    """Keeps `n` forked workers running: restarts one that dies (`Backoff`), links the new
    worker to the live ones, and stops them all within a bound on SIGTERM or SIGINT.

    `work(listener, links, control)` runs in a forked worker and returns its exit code;
    `listen()` makes a listening socket for a replacement worker."""

    def __init__(
        self,
        n: int,
        work: Callable[[socket.socket, list[socket.socket], socket.socket], int],
        listen: Callable[[], socket.socket],
        figures: PoolFigures,
        *,
        kill_after: float = KILL_AFTER_S,
    ) -> None:
        self.slots = [_Slot() for _ in range(n)]
        self.figures = figures
        self.kill_after = kill_after
        self.stopping = False
        self.failed = False
        self._work = work
        self._listen = listen
        self._deadline = math.inf
        self._wake_r, self._wake_w = os.pipe()
        self._handlers: dict[int, Any] = {}

    def start(self, listeners: Sequence[socket.socket]) -> list[int]:
        """Start a worker on each listener (closed here once handed over); their pids."""
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            # The wake-up byte is what counts; the handler is there so the signal is caught.
            self._handlers[sig] = signal.signal(sig, lambda signum, frame: None)
        for i, (slot, sock) in enumerate(zip(self.slots, listeners, strict=True)):
            self._spawn(slot, sock, listeners[i + 1 :])
        return [slot.pid for slot in self.slots]

    def wait(self) -> int:
        """Supervise until stopped and every worker is gone; the exit code (1: a worker
        could not start while no other was alive)."""
        try:
            while not self.stopping or any(slot.pid for slot in self.slots):
                select.select([self._wake_r], [], [], self._timeout())
                for sig in self._signals():
                    if sig in (signal.SIGTERM, signal.SIGINT):
                        self.stop(signal.Signals(sig).name)
                self._reap()
                self._restart_due()
                self._kill_late()
        finally:
            signal.set_wakeup_fd(-1)
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
        return 1 if self.failed else 0

    def stop(self, why: str) -> None:
        """Stop restarting and ask every worker to stop; asked again, kill them now."""
        if self.stopping:
            self._deadline = time.monotonic()
            return
        self.stopping = True
        self._deadline = time.monotonic() + self.kill_after
        live = [slot.pid for slot in self.slots if slot.pid]
        _log(f"{why}: stopping workers {', '.join(map(str, live)) or '(none)'}")
        for slot in self.slots:
            slot.due = None
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)

    def _timeout(self) -> float | None:
        due = [slot.due for slot in self.slots if slot.due is not None]
        if self.stopping:
            due.append(self._deadline)
        if not due or min(due) == math.inf:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _signals(self) -> set[int]:
        got: set[int] = set()
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self._wake_r, 512):
                got.update(data)
        return got

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot in self.slots:
                if slot.pid == pid:
                    self._buried(slot, os.waitstatus_to_exitcode(status))

    def _buried(self, slot: _Slot, code: int) -> None:
        pid, lived = slot.pid, time.monotonic() - slot.started
        slot.pid = 0
        if slot.control is not None:
            slot.control.close()
            slot.control = None
        self.figures.live -= 1
        if self.stopping:
            return
        if code == BOOT_FAILED and not any(s.pid for s in self.slots):
            _log(f"worker {pid} could not start (exit code {code}) and no worker is left")
            self.failed = True
            self.stop("giving up")
            return
        wait = slot.backoff.delay(lived)
        slot.due = time.monotonic() + wait
        _log(f"worker {pid} {_death(code)} after {lived:.1f} s; restarting it in {wait:.1f} s")

    def _restart_due(self) -> None:
        for slot in self.slots:
            if self.stopping or slot.due is None or slot.due > time.monotonic():
                continue
            try:
                sock = self._listen()
            except OSError as exc:
                wait = slot.backoff.delay(0.0)
                slot.due = time.monotonic() + wait
                _log(f"cannot listen for a new worker ({exc}); trying again in {wait:.1f} s")
                continue
            self.figures.restarts += 1
            self._spawn(slot, sock)
            _log(f"worker {slot.pid} started (restart {self.figures.restarts})")

    def _kill_late(self) -> None:
        if not self.stopping or time.monotonic() < self._deadline:
            return
        self._deadline = math.inf
        for slot in self.slots:
            if slot.pid:
                _log(f"worker {slot.pid} did not stop in time; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)

    def _spawn(
        self, slot: _Slot, sock: socket.socket, unused: Sequence[socket.socket] = ()
    ) -> None:
        """Fork a worker for `slot` serving on `sock`, linked to every live worker (which get
        their ends over their control sockets). `unused`: listeners of workers not forked
        yet, which the new worker must not hold."""
        worker_control, control = control_pair()
        live = [other for other in self.slots if other.pid and other is not slot]
        pairs = [link() for _ in live]
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # The worker holds only its own sockets: a peer sees end of file when the
                # other worker dies, a worker when the supervisor does.
                held = [control, *unused, *(theirs for _, theirs in pairs)]
                held += [other.control for other in self.slots if other.control is not None]
                for s in held:
                    s.close()
                self._forget_signals()
                code = self._work(sock, [mine for mine, _ in pairs], worker_control)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        sock.close()
        worker_control.close()
        for other, (mine, theirs) in zip(live, pairs, strict=True):
            mine.close()
            assert other.control is not None
            send_link(other.control, theirs)
            theirs.close()
        slot.pid, slot.control, slot.started, slot.due = pid, control, time.monotonic(), None
        self.figures.live += 1

    def _forget_signals(self) -> None:
        """In a new worker: signals as a plain process has them (its server sets its own)."""
        signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for sig in self._handlers:
            signal.signal(sig, signal.SIG_DFL)
