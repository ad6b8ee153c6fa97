"""``ResumableDataLoader``: a PyTorch ``DataLoader`` whose position is part of the state.

    loader = ResumableDataLoader(dataset, batch_size=32, shuffle=True)
    state = ctx.restore()
    if state is not None:
        ...; loader.load_state_dict(state["loader"])
    for epoch in range(state["epoch"] if state else 0, epochs):
        for batch in loader:                       # a resumed epoch starts at the next batch
            ...
            ctx.checkpoint(lambda: {..., "loader": loader.state_dict(), "epoch": epoch})

The loader draws its shuffling (and its workers' base seed) from a ``torch.Generator``
of its own, never from the global one, and remembers that generator's state at the
start of the epoch and how many batches it has handed out. ``load_state_dict`` puts
the epoch-start state back, and the next ``iter(loader)`` makes the same permutation
and skips the consumed batches in the sampler: their indices are drawn, their samples
are never loaded. Lightning saves and restores such a loader by itself (it has
``state_dict`` / ``load_state_dict``). torch is imported the first time the class is
looked up, not when this module is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

from sdk.integrations._common import lazy_attribute

__all__ = ["ResumableDataLoader"]

FORMAT = "crowdcompute.torch.dataloader/1"
__getattr__ = lazy_attribute(__name__, "ResumableDataLoader", lambda: _build())


def _is_loader_state(state: Any) -> bool:
    """True for what ``ResumableDataLoader.state_dict()`` returns."""
    return isinstance(state, dict) and state.get("format") == FORMAT


def _build() -> Any:
    torch: Any = importlib.import_module("torch")
    data: Any = importlib.import_module("torch.utils.data")

    class ResumableDataLoader(data.DataLoader):  # type: ignore[misc]
        """A ``torch.utils.data.DataLoader`` with ``state_dict()`` / ``load_state_dict()``.

        Takes the arguments of ``DataLoader``. Map-style datasets only (the position of
        an ``IterableDataset`` is the dataset's own). Without ``generator=`` it makes
        one, seeded from torch's global RNG, so ``torch.manual_seed`` before building the
        loader fixes its order. A custom ``sampler`` / ``batch_sampler`` must be
        deterministic or draw from ``loader.generator``; a ``RandomSampler`` drawing from
        the global RNG is refused, because re-creating its permutation on a resume would
        consume global random numbers the interrupted attempt had already drawn.
        """

        def __init__(self, dataset: Any, *args: Any, **kwargs: Any) -> None:
            if isinstance(dataset, data.IterableDataset):
                raise TypeError("ResumableDataLoader needs a map-style dataset; an "
                                "IterableDataset keeps its position itself")
            if kwargs.get("generator") is None:
                seed = int(torch.empty((), dtype=torch.int64).random_().item())
                kwargs["generator"] = torch.Generator().manual_seed(seed)
            super().__init__(dataset, *args, **kwargs)
            for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
                if isinstance(sampler, data.RandomSampler) and sampler.generator is None:
                    raise ValueError("the sampler draws from torch's global RNG; pass "
                                     "shuffle=True instead, or give it generator=loader.generator")
            self._epoch_start: Any = None   # generator state when this epoch began
            self._consumed = 0              # batches handed out in this epoch
            self._skip = 0                  # batches the next iterator skips

        @property
        def _index_sampler(self) -> Any:
            return _Skipping(self, super()._index_sampler)

        def __iter__(self) -> Iterator[Any]:
            # after load_state_dict the generator is back at the interrupted epoch's start
            self._epoch_start = self.generator.get_state()
            self._consumed = self._skip
            inner = super().__iter__()
            return _Counting(self, inner)

        def state_dict(self) -> dict[str, Any]:
            """Where this loader is: the epoch's generator state and the batches handed out."""
            if self._epoch_start is None:   # between epochs: the next one starts from here
                return {"format": FORMAT, "generator": self.generator.get_state(), "consumed": 0}
            return {"format": FORMAT, "generator": self._epoch_start.clone(),
                    "consumed": self._consumed}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            """Make the next ``iter(self)`` continue where ``state`` was taken."""
            if not _is_loader_state(state):
                raise ValueError("not a ResumableDataLoader state")
            self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))
            self._epoch_start = None
            self._skip = self._consumed = int(state["consumed"])

    return ResumableDataLoader


class _Skipping:
    """The loader's index sampler, minus the batches a resumed epoch already consumed."""

    def __init__(self, loader: Any, inner: Any) -> None:
        self.loader, self.inner = loader, inner

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.inner)
        skip, self.loader._skip = self.loader._skip, 0
        for _ in range(skip):
            if next(it, _END) is _END:
                return
        yield from it

    def __len__(self) -> int:
        return len(self.inner)


_END = object()


class _Counting:
    """The DataLoader's iterator, counting the batches it hands out."""

    def __init__(self, loader: Any, inner: Any) -> None:
        self.loader, self.inner = loader, inner

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        try:
            batch = next(self.inner)
        except StopIteration:
            self.loader._epoch_start = None   # the epoch is over
            self.loader._consumed = 0
            raise
        self.loader._consumed += 1
        return batch

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
