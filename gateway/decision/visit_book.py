"""A bounded book of per-visit entries, shared by the caps and the attribution.

Both keep something per open visit (decision counts, recommended items) and
must stay bounded whatever happens upstream: a missed ``visit_ended`` or a
flood of visits must cost a little memory for a while, never an unbounded
amount. Entries are ordered by their last touch: at capacity the least
recently touched visit goes first (``evicted``), and a visit untouched for
``idle_s`` goes at the next touch (``expired``). Visit ids are random and name
a trip, never a person.

Pure: time comes in as a parameter.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    last_s: float


E = TypeVar("E", bound=Timed)


class VisitBook(Generic[E]):
    """Entries by visit id, least recently touched first; at most ``max_visits``."""

    def __init__(self, max_visits: int, idle_s: float) -> None:
        self.max_visits = max_visits
        self.idle_s = idle_s
        self._entries: OrderedDict[str, E] = OrderedDict()
        self.evicted = 0
        self.expired = 0
        self.ended = 0

    def touch(self, visit: str, now_s: float, make: Callable[[], E]) -> E:
        """The visit's entry (made by ``make`` when new), moved to the back, its time raised."""
        self._expire(now_s)
        entry = self._entries.get(visit)
        if entry is None:
            while len(self._entries) >= self.max_visits:
                self._entries.popitem(last=False)
                self.evicted += 1
            entry = self._entries[visit] = make()
        else:
            self._entries.move_to_end(visit)
        entry.last_s = max(entry.last_s, now_s)
        return entry

    def get(self, visit: str) -> E | None:
        return self._entries.get(visit)

    def end(self, visit: str) -> bool:
        """The visit ended: forget its entry. True when there was one."""
        if self._entries.pop(visit, None) is None:
            return False
        self.ended += 1
        return True

    def drop_where(self, doomed: Callable[[E], bool]) -> int:
        """Forget every entry ``doomed`` says so of; how many."""
        gone = [v for v, entry in self._entries.items() if doomed(entry)]
        for v in gone:
            del self._entries[v]
        return len(gone)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def _expire(self, now_s: float) -> None:
        # The front is the least recently touched; stop at the first still alive.
        # ``last_s`` only grows with ``move_to_end``, so the order holds unless
        # touches arrive out of time order, which at worst keeps a visit a little longer.
        while self._entries:
            visit, entry = next(iter(self._entries.items()))
            if now_s - entry.last_s < self.idle_s:
                return
            del self._entries[visit]
            self.expired += 1
