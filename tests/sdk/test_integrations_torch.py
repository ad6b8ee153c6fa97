"""sdk.integrations.torch.ResumableDataLoader: its position is state; a plain PyTorch loop
(the documented recipe) killed twice mid-epoch through a real job ends bit-identical."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import integration_tasks
import pytest
import torch
from _integrations import assert_killed_twice_mid_epoch, killed_and_whole, same_arrays

import sdk
from sdk.integrations.torch import ResumableDataLoader

pytestmark = pytest.mark.timeout(300)
DATASET = torch.utils.data.TensorDataset(torch.arange(40.0).reshape(20, 2))


def batches(loader: Any) -> list[list[float]]:
    return [xb.flatten().tolist() for (xb,) in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loaded_position_continues_the_epoch_and_the_next(workers: int) -> None:
    torch.manual_seed(1)
    loader = ResumableDataLoader(DATASET, batch_size=3, shuffle=True, num_workers=workers)
    batches(loader)                            # one whole epoch first
    epoch = iter(loader)
    head = [next(epoch)[0].flatten().tolist() for _ in range(2)]
    state = loader.state_dict()
    assert state["consumed"] == 2
    rest, after = batches(epoch), batches(loader)
    torch.manual_seed(99)                      # another process: another default seed
    again = ResumableDataLoader(DATASET, batch_size=3, shuffle=True, num_workers=workers)
    again.load_state_dict(state)
    global_rng = torch.get_rng_state()
    assert (batches(again), batches(again)) == (rest, after)
    assert torch.equal(torch.get_rng_state(), global_rng)   # the loader never drew from it
    assert sorted(v for b in head + rest for v in b) == [float(v) for v in range(40)]


def test_a_position_between_epochs_starts_the_next_one() -> None:
    torch.manual_seed(2)
    loader = ResumableDataLoader(DATASET, batch_size=4, shuffle=True)
    batches(loader)
    state = loader.state_dict()
    assert state["consumed"] == 0
    nxt = batches(loader)
    again = ResumableDataLoader(DATASET, batch_size=4, shuffle=True)
    again.load_state_dict(state)
    assert batches(again) == nxt


def test_samplers_on_the_global_rng_and_iterable_datasets_are_refused() -> None:
    with pytest.raises(ValueError, match="global RNG"):
        ResumableDataLoader(DATASET, sampler=torch.utils.data.RandomSampler(DATASET))

    class Stream(torch.utils.data.IterableDataset[int]):
        def __iter__(self) -> Any:
            return iter(range(3))

    with pytest.raises(TypeError, match="map-style"):
        ResumableDataLoader(Stream())
    with pytest.raises(ValueError, match="not a ResumableDataLoader state"):
        ResumableDataLoader(DATASET).load_state_dict({"consumed": 1})


async def test_loop_killed_twice_resumes_bit_identical(worker: None, conn: sdk.Connection,
                                                      tmp_path: Path) -> None:
    ((got, want, starts),) = await killed_and_whole(integration_tasks.torch_loop,
                                                    [{"seed": 5}], tmp_path)
    assert_killed_twice_mid_epoch(starts)
    assert (got["attempt"], want["attempt"]) == (3, 1)
    assert got["resumed_from"] == (int(starts[2][1]), int(starts[2][2]))
    assert same_arrays(got["params"], want["params"])
    assert same_arrays(got["optimizer"], want["optimizer"])
