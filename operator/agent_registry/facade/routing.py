"""Route picks made here, for when the index cannot make them (Redis down).

The index's pick (``index.scripts.ROUTE``) is the rule; this follows it as far as an
answer from the API server allows. Load lives only in the index, so here nobody is full
and nobody is loaded: agents reporting none of the wanted capabilities degraded come
first, then the sticky key's rendezvous winner (the same hash as the script's, so a key
keeps its agent across the fallback), else round robin over the matching agents in name
order, one counter per question. Each counter starts at a random place, so that several
facade replicas, and a restarted one, do not all send their first picks to the same agent.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")
_MAX_KEYS = 4096


class RoundRobin:
    def __init__(self) -> None:
        self._next: OrderedDict[Hashable, int] = OrderedDict()

    def pick(self, key: Hashable, candidates: Sequence[T]) -> T | None:
        if not candidates:
            return None
        position = self._next.get(key)
        if position is None:
            position = random.randrange(1 << 30)
        self._next[key] = position + 1
        self._next.move_to_end(key)
        while len(self._next) > _MAX_KEYS:
            self._next.popitem(last=False)
        return candidates[position % len(candidates)]


def rendezvous_score(key: str, agent_id: str) -> str:
    """The agent's score for a sticky key: the highest wins (hex digests of one length
    compare like the numbers they spell). The index's script computes the same."""
    return hashlib.sha1(f"{key}\n{agent_id}".encode(), usedforsecurity=False).hexdigest()


def rendezvous(key: str, candidates: Sequence[T], agent_id: Callable[[T], str]) -> T | None:
    """The candidate the key sticks to: it stays the same while it is a candidate, and when
    it goes, only its keys move."""
    return max(candidates, key=lambda candidate: rendezvous_score(key, agent_id(candidate)), default=None)


def preferred(candidates: Sequence[T], degraded: Callable[[T], bool]) -> list[T]:
    """The candidates reporting none of the wanted capabilities degraded, or all when every one does."""
    healthy = [candidate for candidate in candidates if not degraded(candidate)]
    return healthy or list(candidates)
