"""The served model pair and its reload: poll the registry alias, load a new pair beside the old one, swap.

A request takes ``holder.current`` once and uses that pipeline to the end, so a swap never changes the
models under an in-flight request and nothing is dropped: the old pair is freed when the last request
using it finishes. A failed load keeps the old pair serving and is reported on ``/readyz``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ranker.pipeline import RankingPipeline

log = logging.getLogger("recrank.serving")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class ModelState:
    """What ``/readyz`` and ``/version`` report."""

    alias: str
    versions: dict[str, str]
    loaded_at: str | None = None
    last_check: str | None = None
    reload_error: str | None = None


class ModelHolder:
    """Holds the current :class:`RankingPipeline`; ``refresh`` moves it to the version the alias points at.

    ``resolve()`` returns the ranker version behind the alias; ``load(version)`` builds its pipeline.
    Both are injected so tests can drive reloads without a registry.
    """

    def __init__(self, alias: str, resolve: Callable[[], str], load: Callable[[str], RankingPipeline]) -> None:
        self._resolve = resolve
        self._load = load
        self._lock = threading.Lock()  # one refresh at a time; readers never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: RankingPipeline | None = None
        self.state = ModelState(alias=alias, versions={})

    @property
    def ready(self) -> bool:
        return self.current is not None

    def refresh(self) -> bool:
        """Load the alias's version if it differs from the served one; True when the served pair changed."""
        with self._lock:
            self.state.last_check = _now()
            try:
                version = self._resolve()
                if self.current is not None and self.current.versions.get("ranker") == version:
                    self.state.reload_error = None
                    return False
                pipeline = self._load(version)
            except Exception as exc:  # a bad registry state must not take the server down
                self.state.reload_error = f"{type(exc).__name__}: {exc}"
                log.error(
                    "model load failed; %s", "keeping the served pair" if self.ready else "not ready", exc_info=exc
                )
                return False
            self.current = pipeline  # the swap: one reference assignment
            self.state.versions = dict(pipeline.versions)
            self.state.loaded_at = _now()
            self.state.reload_error = None
            log.warning("serving ranker %s", pipeline.versions)
            return True

    def start_polling(self, interval_s: float) -> None:
        """Refresh every ``interval_s`` seconds in a daemon thread (model loads must not block requests)."""
        if interval_s <= 0 or self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="recrank-model-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
