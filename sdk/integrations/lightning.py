"""``CrowdComputeCallback`` for the Lightning ``Trainer``: exact, mid-epoch resume.

    trainer = L.Trainer(max_epochs=3, callbacks=[CrowdComputeCallback()])
    trainer.fit(model, train_dataloaders=ResumableDataLoader(dataset, shuffle=True, ...))

At the end of a training batch, whenever the task's checkpoint is due, the callback
takes Lightning's own full checkpoint in memory (``dump_checkpoint``: the module's
state dict, optimizers, LR schedulers, precision/scaler state, loop progress and global
step, the other callbacks' and the datamodule's state, and the position of every
stateful dataloader) and hands it to ``ctx.checkpoint``, which adds the process's RNGs.
No file is written. On a retry, ``setup`` gives the restored checkpoint to the
Trainer's checkpoint connector, which restores it exactly as it restores
``fit(ckpt_path=...)``; the fit then continues at the next batch.

Mid-epoch exactness needs a dataloader whose position is state: use
:class:`sdk.integrations.torch.ResumableDataLoader` (or any loader with
``state_dict`` / ``load_state_dict`` that counts the batches handed out); with a plain
``DataLoader`` Lightning restarts the interrupted epoch's data from its beginning. No
checkpoint is taken at an epoch's last batch: Lightning's restart from that point skips
the next epoch's batches, so a due checkpoint is taken at the next batch instead.

Lightning is imported the first time ``CrowdComputeCallback`` is looked up.
"""

from __future__ import annotations

import importlib
from typing import Any

from sdk.integrations._common import lazy_attribute
from sdk.integrations._common import task as _task

__all__ = ["CrowdComputeCallback"]

FORMAT = "crowdcompute.lightning/1"
__getattr__ = lazy_attribute(__name__, "CrowdComputeCallback", lambda: _build())


def _build() -> Any:
    pl: Any = importlib.import_module("lightning.pytorch")

    class CrowdComputeCallback(pl.Callback):  # type: ignore[misc]
        """Checkpoint and resume a ``Trainer.fit`` inside a CrowdCompute task.

        Outside a task, or in a job without checkpoints, it does nothing. The task must
        build the same module, trainer and data on every attempt (seed first, e.g.
        ``L.seed_everything``). Don't also pass ``ckpt_path`` to ``fit``.

        Attributes:
            resumed_from: ``(epoch, batches done in that epoch)`` this attempt resumed
                from, or None when it started fresh.
        """

        def __init__(self) -> None:
            super().__init__()
            self.resumed_from: tuple[int, int] | None = None
            self._restore_tried = False

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            ctx = _task()
            if stage != "fit" or ctx is None or self._restore_tried:   # a second fit starts fresh
                return
            self._restore_tried = True
            state = ctx.restore()
            if not (isinstance(state, dict) and state.get("format") == FORMAT):
                return
            checkpoint = state["checkpoint"]
            # What fit(ckpt_path=...) would have loaded from the file; the connector
            # restores model, callbacks, precision, loops, optimizers and schedulers.
            trainer._checkpoint_connector._loaded_checkpoint = checkpoint
            self.resumed_from = (int(state["epoch"]), int(state["batch"]))

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            ctx = _task()
            if ctx is None or batch_idx + 1 >= trainer.num_training_batches:
                # Lightning's restart from a checkpoint taken after an epoch's last batch
                # skips the next epoch's batches; the next batch takes a due checkpoint.
                return
            ctx.checkpoint(lambda: self._state(trainer), progress_percent=_progress(trainer))

        def _state(self, trainer: Any) -> dict[str, Any]:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            processed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            return {"format": FORMAT, "checkpoint": checkpoint,
                    "epoch": trainer.current_epoch, "batch": processed}

    return CrowdComputeCallback


def _progress(trainer: Any) -> float | None:
    total = trainer.estimated_stepping_batches
    if not total or total == float("inf"):
        return None
    return float(min(100.0, 100.0 * trainer.global_step / total))
