"""sdk.integrations.lightning: a Trainer.fit with the callback and a ResumableDataLoader, its
task process SIGKILLed twice mid-epoch through a real job, ends bit-identical to an
uninterrupted fit (weights, AdamW moments, LR schedule, global step)."""

from __future__ import annotations

from pathlib import Path

import integration_tasks
import pytest
from _integrations import assert_killed_twice_mid_epoch, killed_and_whole, same_arrays

import sdk

pytestmark = pytest.mark.timeout(300)


async def test_fit_killed_twice_resumes_bit_identical(worker: None, conn: sdk.Connection,
                                                     tmp_path: Path) -> None:
    ((got, want, starts),) = await killed_and_whole(integration_tasks.lightning_fit,
                                                    [{"seed": 5, "validation": True}], tmp_path)
    assert_killed_twice_mid_epoch(starts)
    assert (got["attempt"], want["attempt"]) == (3, 1)
    assert got["resumed_from"] == (int(starts[2][1]), int(starts[2][2]))
    assert same_arrays(got["params"], want["params"])
    assert same_arrays(got["optimizer"], want["optimizer"])
    assert (got["lr"], got["global_step"]) == (want["lr"], want["global_step"])
    assert want["global_step"] == integration_tasks.EPOCHS * integration_tasks.BATCHES


def test_outside_a_task_the_callback_only_trains() -> None:
    import lightning.pytorch as pl
    import torch

    from sdk.integrations.lightning import CrowdComputeCallback

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return self.lin(batch).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters())

    cb = CrowdComputeCallback()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", callbacks=[cb], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Net(), torch.utils.data.DataLoader(torch.ones(4, 2), batch_size=2))
    assert (cb.resumed_from, trainer.global_step) == (None, 4)
