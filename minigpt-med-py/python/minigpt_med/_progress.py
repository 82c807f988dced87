"""The default load-progress display: a tqdm bar when tqdm is installed, else nothing."""

from __future__ import annotations

from typing import Any, Optional


class _TqdmProgress:
    """Callable ``(done, total)`` driving a tqdm bar created on the first call."""

    def __init__(self, tqdm: Any) -> None:
        self._tqdm = tqdm
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = self._tqdm(total=total, desc="Loading MiniGPT-Med", unit="step", leave=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def default_progress() -> Optional[_TqdmProgress]:
    """A tqdm progress callable, or ``None`` (silent) when tqdm is not importable."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return _TqdmProgress(tqdm)
