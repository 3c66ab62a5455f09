"""A bounded LRU of request users' vectors, for one owner at a time (a pipeline's online source and text model).

Why it is exact: a pipeline's snapshot, and with it every user's history, never changes (a new snapshot is a new
pipeline), and a miss computes the vector with the very tower pass an uncached one-user request makes. The owner
is checked on every read: when a pipeline's source or text model is replaced, the vectors of the old pair are
dropped, and a vector computed for the old pair while the swap happened is not stored.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch


class UserVectorCache:
    """``user id -> vector`` of the ``size`` most recently requested users of one owner."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._vectors: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._owner: tuple[object, ...] = ()
        self._lock = threading.Lock()

    def _owned_by(self, owner: tuple[object, ...]) -> bool:
        return len(owner) == len(self._owner) and all(a is b for a, b in zip(owner, self._owner, strict=True))

    def get(self, owner: tuple[object, ...], user: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``user``'s vector under ``owner`` (compared by identity), computed by ``compute`` on a miss (outside
        the lock: a tower pass must not hold up other requests' hits)."""
        with self._lock:
            if not self._owned_by(owner):
                self._vectors.clear()
                self._owner = owner
            vector = self._vectors.get(user)
            if vector is not None:
                self._vectors.move_to_end(user)
                return vector
        vector = compute()
        with self._lock:
            if self._owned_by(owner):  # not emptied for another owner while this vector was computed
                self._vectors[user] = vector
                while len(self._vectors) > self.size:
                    self._vectors.popitem(last=False)
        return vector

    def __len__(self) -> int:
        return len(self._vectors)

    def __iter__(self) -> Iterator[str]:
        """The cached user ids, least recently used first."""
        return iter(list(self._vectors))
