"""Rank 0's KV caches, mirrored on the other ranks of a distributed instance.

mlx-lm's `BatchGenerator` reshapes its caches between forward passes: it makes one per
new sequence, merges those of a prompt batch into batched caches, pads them, copies and
splits a batch, filters finished rows out, extracts a finished row's cache for the prompt
cache, which trims and copies it for the next turn. The other ranks hold the keys and
values of the same rows (for their own layers, or their share of every layer's heads),
so each must reshape its caches the same way at the same point between the same passes.

How: every cache list rank 0 makes ends with a `Witness`, a cache without arrays that
the generation loop handles like the others (it merges, filters, copies ... every cache
of a list alike, in order, so the witness, last, sees an operation only once the real
caches have taken it) and that writes down each operation in a `Journal`, naming cache
lists by number. Before each forward pass rank 0 sends the journal's new entries with
the pass's doorbell (`Bell.ops`); a follower's `Mirror` applies them to its own caches,
then runs the pass on the list the bell names. The head hands its model the list without
the witness.

A list is dropped once rank 0 lets go of its witness (a batch empties, the prompt cache
evicts an entry), so a follower holds the caches rank 0 holds, no more.
"""

from __future__ import annotations

import copy
import json
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx

Op = list[Any]


class MirrorError(RuntimeError):
    """A follower's caches are out of step with rank 0's: the group cannot go on (a
    RuntimeError, as a broken ring is)."""


class Journal:
    """Rank 0's record of cache operations not yet sent to the other ranks."""

    def __init__(self) -> None:
        self._ops: list[Op] = []
        self._numbers = 0

    def number(self) -> int:
        self._numbers += 1
        return self._numbers

    def record(self, op: Op) -> None:
        self._ops.append(op)

    def take(self) -> bytes:
        """The operations recorded since the last take, encoded for a `Bell`."""
        ops, self._ops = self._ops, []
        return json.dumps(ops, separators=(",", ":")).encode() if ops else b""


class Witness:
    """The last cache of each of rank 0's cache lists: holds no arrays, records what the
    generation loop does to its list."""

    def __init__(self, journal: Journal, op: str, *args: Any) -> None:
        self._journal = journal
        self.number = journal.number()
        journal.record([op, self.number, *args])
        finalizer = weakref.finalize(self, journal.record, ["drop", self.number])
        finalizer.atexit = False

    @classmethod
    def new(cls, journal: Journal) -> Witness:
        return cls(journal, "new")

    def _record(self, op: str, *args: Any) -> None:
        self._journal.record([op, self.number, *args])

    # -- what a batch does to its caches ---------------------------------------------

    def merge(self, caches: Sequence[Witness]) -> Witness:
        return Witness(self._journal, "merge", [c.number for c in caches])

    def extend(self, other: Witness) -> None:
        self._record("extend", other.number)

    def filter(self, keep: Sequence[int]) -> None:
        self._record("filter", [int(i) for i in keep])

    def extract(self, index: int) -> Witness:
        return Witness(self._journal, "extract", self.number, int(index))

    def prepare(self, **padding: Any) -> None:
        self._record("prepare", {k: _plain(v) for k, v in padding.items()})

    def finalize(self) -> None:
        self._record("finalize")

    def trim(self, n: int) -> int:
        self._record("trim", int(n))
        return int(n)

    def is_trimmable(self) -> bool:
        return True  # the real caches of the list decide

    def __deepcopy__(self, memo: dict[int, Any]) -> Witness:
        return Witness(self._journal, "copy", self.number)

    # -- what generation code reads of any cache -------------------------------------

    @property
    def state(self) -> tuple[()]:
        return ()

    @property
    def nbytes(self) -> int:
        return 0


def _plain(value: Any) -> Any:
    """A padding argument as JSON can carry it (mlx-lm passes lists, maybe arrays)."""
    if isinstance(value, mx.array):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [int(v) for v in value]
    return value


def split_witness(cache: list[Any]) -> tuple[list[Any], Witness]:
    """A head's cache list: the model's caches and their witness."""
    *layers, witness = cache
    if not isinstance(witness, Witness):
        raise TypeError("a distributed head ran on caches it did not make (make_cache)")
    return layers, witness


class Mirror:
    """A follower's cache lists, kept in step with rank 0's by its journal."""

    def __init__(self, make_cache: Callable[[], list[Any]]) -> None:
        self._make_cache = make_cache
        self._lists: dict[int, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._lists)

    def __getitem__(self, number: int) -> list[Any]:
        try:
            return self._lists[number]
        except KeyError:
            raise MirrorError(f"rank 0 named cache list {number}, which this rank lacks") from None

    def apply(self, ops: bytes) -> None:
        """Do to the caches what rank 0 did, in its order."""
        if not ops:
            return
        for name, number, *args in json.loads(ops):
            handler = getattr(self, f"_{name}", None)
            if handler is None:
                raise MirrorError(f"unknown cache operation {name!r} from rank 0")
            handler(number, *args)

    def _new(self, number: int) -> None:
        self._lists[number] = self._make_cache()

    def _merge(self, number: int, sources: list[int]) -> None:
        lists = [self[s] for s in sources]
        self._lists[number] = [layer[0].merge(list(layer)) for layer in zip(*lists, strict=True)]

    def _extend(self, number: int, other: int) -> None:
        for mine, theirs in zip(self[number], self[other], strict=True):
            mine.extend(theirs)

    def _filter(self, number: int, keep: list[int]) -> None:
        for cache in self[number]:
            cache.filter(keep)

    def _extract(self, number: int, source: int, index: int) -> None:
        self._lists[number] = [cache.extract(index) for cache in self[source]]

    def _prepare(self, number: int, padding: dict[str, Any]) -> None:
        for cache in self[number]:
            cache.prepare(**padding)

    def _finalize(self, number: int) -> None:
        for cache in self[number]:
            cache.finalize()

    def _trim(self, number: int, n: int) -> None:
        for cache in self[number]:
            cache.trim(n)

    def _copy(self, number: int, source: int) -> None:
        self._lists[number] = copy.deepcopy(self[source])

    def _drop(self, number: int) -> None:
        self._lists.pop(number, None)
