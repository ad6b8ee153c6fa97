"""``CrowdComputeCallback`` for the Hugging Face ``Trainer``: exact, mid-epoch resume.

    cb = CrowdComputeCallback()
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    trainer.train(resume_from_checkpoint=cb.resume_from_checkpoint(trainer))

At the end of an optimizer step, whenever the task's checkpoint is due, the callback
captures in memory the model's, optimizer's, LR scheduler's and gradient scaler's state
dicts and the trainer state (global step, epoch, log history, stateful callbacks);
``ctx.checkpoint`` adds the process's RNGs. Nothing is written to disk while training.

On a retry, ``resume_from_checkpoint(trainer)`` restores that state (the RNGs first)
and lays it out as a Trainer checkpoint in a temporary directory (removed when training
ends) so the Trainer resumes through its own path: it loads the states, skips the
consumed batches of the interrupted epoch in the sampler (their samples are not
loaded) and puts the RNGs back before the first resumed step. In a first attempt it
returns None. It also gives the callback the trainer, whose gradient scaler and
stateful callbacks are captured with the rest; the callback refuses to train without.

transformers is imported the first time ``CrowdComputeCallback`` is looked up.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sdk.integrations._common import lazy_attribute
from sdk.integrations._common import task as _task

__all__ = ["CrowdComputeCallback"]

FORMAT = "crowdcompute.transformers/1"
__getattr__ = lazy_attribute(__name__, "CrowdComputeCallback", lambda: _build())


def _build() -> Any:
    hf: Any = importlib.import_module("transformers")

    class CrowdComputeCallback(hf.TrainerCallback):  # type: ignore[misc]
        """Checkpoint and resume a ``Trainer.train`` inside a CrowdCompute task.

        The task must build the same model, arguments and data on every attempt (set
        ``TrainingArguments(seed=...)``; the Trainer's seedable sampler then orders each
        epoch the same way). Outside a task it does nothing.

        Attributes:
            resumed_from: the global step this attempt resumed from, or None.
        """

        def __init__(self) -> None:
            super().__init__()
            self.resumed_from: int | None = None
            self._trainer: Any = None
            self._dir: Path | None = None

        def resume_from_checkpoint(self, trainer: Any) -> str | None:
            """Bind ``trainer``; the directory to pass to ``trainer.train`` on a resume, else None."""
            self._trainer = trainer
            ctx = _task()
            state = ctx.restore() if ctx is not None else None   # the RNGs are back now
            if not (isinstance(state, dict) and state.get("format") == FORMAT):
                return None
            self._dir = Path(tempfile.mkdtemp(prefix="crowdcompute-hf-"))
            _write_checkpoint(self._dir, state, trainer)
            self.resumed_from = int(json.loads(state["trainer_state"])["global_step"])
            return str(self._dir)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._trainer is None and _task() is not None:
                raise RuntimeError(
                    "CrowdComputeCallback needs the trainer: call trainer.train("
                    "resume_from_checkpoint=callback.resume_from_checkpoint(trainer))")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            ctx = _task()
            if ctx is None:
                return
            pct = 100.0 * state.global_step / state.max_steps if state.max_steps else None
            ctx.checkpoint(lambda: self._state(state, kwargs), progress_percent=pct)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

        def _state(self, state: Any, hooks: dict[str, Any]) -> dict[str, Any]:
            trainer = self._trainer
            _record_stateful_callbacks(hf, trainer, state)
            scaler = getattr(trainer.accelerator, "scaler", None)
            return {
                "format": FORMAT,
                "model": hooks["model"].state_dict(),
                "optimizer": hooks["optimizer"].state_dict(),
                "scheduler": hooks["lr_scheduler"].state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "trainer_state": json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True),
            }

    return CrowdComputeCallback


def _record_stateful_callbacks(hf: Any, trainer: Any, state: Any) -> None:
    """What the Trainer records in its state before it saves a checkpoint."""
    stateful = [cb for cb in trainer.callback_handler.callbacks + [trainer.control]
                if isinstance(cb, hf.trainer_callback.ExportableState)]
    for cb in stateful:
        name = cb.__class__.__name__
        if isinstance(state.stateful_callbacks.get(name), list):
            state.stateful_callbacks[name].append(cb.state())
        else:
            state.stateful_callbacks[name] = cb.state()


def _write_checkpoint(path: Path, state: dict[str, Any], trainer: Any) -> None:
    """The restored state as the files ``Trainer.train(resume_from_checkpoint=)`` reads."""
    import random

    import numpy as np
    import torch

    torch.save(state["model"], path / "pytorch_model.bin")
    torch.save(state["optimizer"], path / "optimizer.pt")
    torch.save(state["scheduler"], path / "scheduler.pt")
    if state["scaler"] is not None:
        torch.save(state["scaler"], path / "scaler.pt")
    (path / "trainer_state.json").write_text(state["trainer_state"])
    # The RNGs ctx.restore() put back: the Trainer sets them again right before the first
    # resumed step, after the batches it skipped have drawn what they draw.
    rng: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                           "cpu": torch.random.get_rng_state()}
    cuda: Any = torch.cuda
    if cuda.is_available() and cuda.is_initialized():
        rng["cuda"] = cuda.random.get_rng_state_all()
    name = ("rng_state.pth" if trainer.args.world_size <= 1
            else f"rng_state_{trainer.args.process_index}.pth")
    torch.save(rng, path / name)
