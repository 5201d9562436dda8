"""`TTLCache`: a small thread-safe map whose entries expire `ttl_s` after they were stored and
whose size is bounded (least recently used dropped first). The per-process caches of the
serving path (tokens, predict lookups) use it; their TTL is the documented staleness bound."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

_MISSING = object()


class TTLCache:
    def __init__(self, ttl_s: float, max_items: int = 4096) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._items: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: Any = None) -> Any:
        if self.ttl_s <= 0:
            return default
        now = time.monotonic()
        with self._lock:
            entry = self._items.get(key, _MISSING)
            if entry is _MISSING:
                return default
            stored, value = entry
            if now - stored >= self.ttl_s:
                del self._items[key]
                return default
            self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._items[key] = (time.monotonic(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
