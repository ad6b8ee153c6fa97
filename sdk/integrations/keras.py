"""``CrowdComputeCallback`` for Keras 3 ``model.fit``: exact, mid-epoch resume.

    model.fit(data, epochs=3, callbacks=[CrowdComputeCallback()])

What is checkpointed, at the end of a batch whenever the task's checkpoint is due: every
variable of the model (weights, non-trainable state and the seed-generator states that
Dropout and other random layers draw from), the optimizer's variables, the metric
variables, the position (epoch, batches done in it) and, through ``ctx.checkpoint``, the
process's global RNGs. ``on_train_begin`` of a retry puts it all back (building the
optimizer first) and *replays the input*: every batch the interrupted attempt consumed
is taken from the input pipeline and dropped without a training step, so the pipeline
(a shuffled ``tf.data.Dataset``, a NumPy input with ``shuffle=True``, a Python
generator) is where it was and the next batch trained is the one the interrupted
attempt would have trained next. The replay reads data; it does not compute.

Keras is imported the first time ``CrowdComputeCallback`` is looked up, not when this
module is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from sdk.integrations._common import lazy_attribute
from sdk.integrations._common import task as _task

__all__ = ["CrowdComputeCallback"]

FORMAT = "crowdcompute.keras/1"
__getattr__ = lazy_attribute(__name__, "CrowdComputeCallback", lambda: _build())


def _build() -> Any:
    keras: Any = importlib.import_module("keras")

    class CrowdComputeCallback(keras.callbacks.Callback):  # type: ignore[misc]
        """Checkpoint and resume a ``model.fit`` run inside a CrowdCompute task.

        Put it in ``callbacks=[...]`` of a ``fit`` run by a task of a checkpointed job
        (``checkpoint_interval=`` or ``checkpoint_every_steps=``). Outside a task it
        does nothing. For an exact resume the task must rebuild the same model and
        input on every attempt (seed with ``keras.utils.set_random_seed`` first), and
        a Python generator must draw from its own seeded RNG, not the global ones.

        Attributes:
            resumed_from: ``(epoch, batches done in that epoch)`` this attempt resumed
                from, or None when it started fresh.
        """

        def __init__(self) -> None:
            super().__init__()
            self.resumed_from: tuple[int, int] | None = None
            self._epoch = 0
            self._step = 0
            self._skip_until: tuple[int, int] | None = None
            self._skipping = False
            self._epoch_metrics: list[list[Any]] = []  # [epoch, values] per finished epoch
            self._restored_metrics: dict[int, list[Any]] = {}
            self._epoch_val: list[list[Any]] = []   # [epoch, validation logs] per finished epoch
            self._replayed_val: dict[int, dict[str, float]] = {}
            self._original_train_function: Any = None
            self._restore_tried = False

        # -- fit's hooks ---------------------------------------------------------------

        def on_train_begin(self, logs: Any = None) -> None:
            ctx = _task()
            if ctx is not None and not self._restore_tried:   # a second fit starts fresh
                self._restore_tried = True
                state = ctx.restore()
                if isinstance(state, dict) and state.get("format") == FORMAT:
                    self._load(state)
            self._original_train_function = self.model.train_function
            self.model.train_function = self._train_function
            if self._replayed_val:
                # an instance attribute shadows the method fit calls for validation
                self.model.evaluate = self._evaluate

        def on_train_end(self, logs: Any = None) -> None:
            if self._original_train_function is not None:
                self.model.train_function = self._original_train_function
                self._original_train_function = None
            if "evaluate" in vars(self.model):
                del self.model.evaluate

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._epoch, self._step = epoch, 0
            # fit reset the metrics just before; a replayed or resumed epoch gets the
            # values the interrupted attempt had, so its epoch logs are the same.
            values = self._restored_metrics.pop(epoch, None)
            if values is not None:
                _assign(self.model.metrics_variables, values)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            val = {k[4:]: float(v) for k, v in (logs or {}).items() if k.startswith("val_")}
            if val and all(done != epoch for done, _ in self._epoch_val):
                self._epoch_val.append([epoch, val])
            if not self.params.get("steps"):   # else taken at the last batch, before validation
                self._keep_epoch_metrics()

        def _keep_epoch_metrics(self) -> None:
            if all(done != self._epoch for done, _ in self._epoch_metrics):
                self._epoch_metrics.append([self._epoch, _values(self.model.metrics_variables)])

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self._skipping = (self._skip_until is not None
                              and (self._epoch, batch) < self._skip_until)
            if not self._skipping:
                self._skip_until = None

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self._step = batch + 1
            if self._skipping:
                return
            if self._step == self.params.get("steps"):
                self._keep_epoch_metrics()
            ctx = _task()
            if ctx is not None:
                ctx.checkpoint(self._state, progress_percent=self._progress())

        # -- state ---------------------------------------------------------------------

        def _state(self) -> dict[str, Any]:
            model = self.model
            return {
                "format": FORMAT,
                "epoch": self._epoch,
                "step": self._step,
                "model": _values(model.variables),
                "optimizer": _values(model.optimizer.variables),
                "metrics": _values(model.metrics_variables),
                "epoch_metrics": [list(m) for m in self._epoch_metrics],
                "epoch_val": [list(v) for v in self._epoch_val],
            }

        def _load(self, state: dict[str, Any]) -> None:
            model = self.model
            optimizer = model.optimizer
            if not optimizer.built:
                # its slot variables exist only once it is built
                optimizer.build(model.trainable_variables)
            _assign(model.variables, state["model"], "model")
            _assign(optimizer.variables, state["optimizer"], "optimizer")
            self._epoch_metrics = [[int(e), list(v)] for e, v in state["epoch_metrics"]]
            self._restored_metrics = {e: v for e, v in self._epoch_metrics}
            self._restored_metrics[state["epoch"]] = list(state["metrics"])
            self._epoch_val = [[int(e), dict(v)] for e, v in state["epoch_val"]]
            self._replayed_val = {e: v for e, v in self._epoch_val if e < state["epoch"]}
            self._skip_until = (state["epoch"], state["step"])
            self.resumed_from = (state["epoch"], state["step"])

        def _train_function(self, iterator: Any) -> Any:
            if not self._skipping:
                return self._original_train_function(iterator)
            _drop_batches(keras, iterator, int(getattr(self.model, "steps_per_execution", 1)))
            # metrics as the interrupted attempt had them, so the epoch logs match
            return self.model.get_metrics_result()

        def _evaluate(self, *args: Any, **kwargs: Any) -> Any:
            val = self._replayed_val.pop(self._epoch, None)
            if val is not None and self._skipping_epoch():
                return dict(val)   # a replayed epoch's validation, as the first attempt logged it
            return type(self.model).evaluate(self.model, *args, **kwargs)

        def _skipping_epoch(self) -> bool:
            return self._skip_until is not None and self._epoch < self._skip_until[0]

        def _progress(self) -> float | None:
            epochs, steps = self.params.get("epochs"), self.params.get("steps")
            if not epochs or not steps:
                return None
            done = self._epoch * int(steps) + self._step
            return min(100.0, 100.0 * done / (int(epochs) * int(steps)))

    return CrowdComputeCallback


def _values(variables: Any) -> list[Any]:
    return [v.numpy() for v in variables]


def _assign(variables: Any, values: list[Any], what: str = "metrics") -> None:
    variables = list(variables)
    if len(variables) != len(values):
        raise ValueError(f"the checkpoint has {len(values)} {what} variables but this run has "
                         f"{len(variables)}: was the model built the same way?")
    for var, value in zip(variables, values):
        var.assign(value)


def _drop_batches(keras: Any, iterator: Any, count: int) -> None:
    """Take ``count`` batches from fit's iterator without training on them."""
    if keras.backend.backend() == "tensorflow":
        for _ in range(count):
            iterator.get_next()  # OutOfRangeError at the end: fit handles it
    # Other backends hand train_function batches already taken from the input.
