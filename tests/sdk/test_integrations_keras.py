"""sdk.integrations.keras: a model.fit with the callback, its task process SIGKILLed twice
mid-epoch through a real job, ends bit-identical to an uninterrupted fit."""

from __future__ import annotations

from pathlib import Path

import integration_tasks
import pytest
from _integrations import assert_killed_twice_mid_epoch, killed_and_whole, same_arrays

import sdk

pytestmark = pytest.mark.timeout(300)


async def test_fit_killed_twice_resumes_bit_identical(worker: None, conn: sdk.Connection,
                                                     tmp_path: Path) -> None:
    inputs = ["dataset", "numpy", "generator"]   # one job: the TF import is paid per process
    cfgs = [{"seed": 5, "input": i, "validation": i == "numpy"} for i in inputs]
    runs = await killed_and_whole(integration_tasks.keras_fit, cfgs, tmp_path)
    for data, (got, want, starts) in zip(inputs, runs):
        assert_killed_twice_mid_epoch(starts)
        assert (got["attempt"], want["attempt"]) == (3, 1), data
        assert got["resumed_from"] == (int(starts[2][1]), int(starts[2][2])), data
        assert same_arrays(got["variables"], want["variables"]), data   # weights, Dropout seeds
        assert same_arrays(got["optimizer"], want["optimizer"]), data
        assert got["history"] == want["history"], data   # val_loss too, for numpy
    assert "val_loss" in runs[1][1]["history"]


def test_outside_a_task_the_callback_only_trains() -> None:
    import keras
    import numpy as np

    from sdk.integrations.keras import CrowdComputeCallback

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adamw", loss="mse")
    cb = CrowdComputeCallback()
    model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=2, callbacks=[cb], verbose=0)
    assert cb.resumed_from is None
    assert int(model.optimizer.iterations.numpy()) == 2
