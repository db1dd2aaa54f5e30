"""The wall-clock budget of one request, checked where the work is.

A request gets a deadline when it arrives (`twin.guard`); the expensive loops of queries,
filters and answers call `check` between bounded steps (a chunk of candidates, one node of a
filter, a layer), so a request past its budget stops its own work and is answered 400
`TimeLimitExceeded`, naming the setting, instead of holding a thread and the GIL for minutes.
The deadline travels in a context variable, which the thread pool's calls inherit; code run
outside a request (the CLI, tests calling functions directly) has no deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from twin.errors import TimeLimitExceeded

SETTING = "TWIN_REQUEST_TIMEOUT_S"


@dataclass(frozen=True)
class Deadline:
    """When a request's time is up (`time.monotonic()` seconds) and the budget it had."""

    at: float
    seconds: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """The deadline `seconds` from now."""
        return cls(time.monotonic() + seconds, seconds)

    @property
    def passed(self) -> bool:
        """Whether the time is up."""
        return time.monotonic() > self.at

    def check(self, doing: str) -> None:
        """`TimeLimitExceeded` once the time is up, saying what the request was doing."""
        if self.passed:
            raise TimeLimitExceeded(
                f"the request ran past its budget of {self.seconds:g} s ({SETTING}) while "
                f"{doing}; ask for less (a smaller area, radius, filter or limit)"
            )


_current: ContextVar[Deadline | None] = ContextVar("twin_deadline", default=None)


def current() -> Deadline | None:
    """The deadline of the request being answered, if any."""
    return _current.get()


def check(doing: str) -> None:
    """`TimeLimitExceeded` when the request being answered is past its deadline."""
    deadline = _current.get()
    if deadline is not None:
        deadline.check(doing)


@contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Run the block (and the thread-pool calls it makes) with a deadline `seconds` away."""
    d = Deadline.after(seconds)
    token = _current.set(d)
    try:
        yield d
    finally:
        _current.reset(token)
