"""What a lazy array reads, remembered by the array's dask name.

A reader that knows where its pixels or light curves come from (the files, the byte layout)
remembers that *recipe* under the names of the dask arrays it returns. A later step that gets
the same arrays unchanged can then read from the files itself (a crop pushed into the reads, a
task reading its own light curves) instead of depending on the arrays' tasks. Any operation
that changes an array gives it another name, for which no recipe is found.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["Recipes"]

T = TypeVar("T")


class Recipes(Generic[T]):
    """A thread-safe registry of recipes by dask array name, keeping the latest ``maximum``.

    Parameters
    ----------
    maximum : int
        Recipes kept; the least recently remembered are forgotten first.
    """

    def __init__(self, maximum: int) -> None:
        self._recipes: OrderedDict[str, T] = OrderedDict()
        self._maximum = maximum
        self._lock = threading.Lock()

    def remember(self, names: Iterable[str], recipe: T) -> None:
        """Remember ``recipe`` under each of the dask array names ``names``."""
        with self._lock:
            for name in names:
                self._recipes[name] = recipe
                self._recipes.move_to_end(name)
            while len(self._recipes) > self._maximum:
                self._recipes.popitem(last=False)

    def get(self, name: str) -> T | None:
        """The recipe remembered under ``name``, or ``None``."""
        with self._lock:
            return self._recipes.get(name)
