"""Spreading picks: one healthy agent of a type with given capabilities, a different one each time.

Round robin over the matching agents in name order, one counter per question. Each
counter starts at a random place, so that several facade replicas, and a restarted one,
do not all send their first picks to the same agent.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Hashable, Sequence
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
