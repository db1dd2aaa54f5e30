"""The budget of one request (its wall-clock time and the size of its answer), checked where
the work is.

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

from twin.errors import LimitExceeded, TimeLimitExceeded

SETTING = "TWIN_REQUEST_TIMEOUT_S"
ANSWER_SETTING = "TWIN_MAX_ANSWER_BYTES"


@dataclass(frozen=True)
class Deadline:
    """When a request's time is up (`time.monotonic()` seconds) and the budget it had."""

    at: float
    seconds: float
    answer_bytes: int | None = None
    """Largest answer the request may be given (`TWIN_MAX_ANSWER_BYTES`)."""

    @classmethod
    def after(cls, seconds: float, answer_bytes: int | None = None) -> Deadline:
        """The deadline `seconds` from now."""
        return cls(time.monotonic() + seconds, seconds, answer_bytes)

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


def check_answer(size: int, what: str = "answer") -> None:
    """`LimitExceeded` when an answer of `size` bytes (or at least that many) is over the
    request's answer budget; called before the answer is written out where its size can be
    foreseen, and again once it is made."""
    d = _current.get()
    if d is not None and d.answer_bytes is not None and size > d.answer_bytes:
        raise LimitExceeded(
            f"the {what} would be {size / 2**20:.1f}+ MiB, more than the maximum of "
            f"{d.answer_bytes / 2**20:.1f} MiB ({ANSWER_SETTING}); ask for fewer features "
            "(limit) or a smaller area"
        )


@contextmanager
def deadline(seconds: float, answer_bytes: int | None = None) -> Iterator[Deadline]:
    """Run the block (and the thread-pool calls it makes) with a deadline `seconds` away and
    an answer budget of `answer_bytes`."""
    d = Deadline.after(seconds, answer_bytes)
    token = _current.set(d)
    try:
        yield d
    finally:
        _current.reset(token)
