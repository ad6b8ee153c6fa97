"""Training tasks for the framework-integration tests (``tests/sdk/test_integrations_*``).

Each trains a tiny model with Dropout and AdamW through a framework's own loop with
the CrowdCompute callback. ``cfg["kills"]`` lists, per attempt, the batch after which
that attempt SIGKILLs its own task process, once one of its checkpoints has
committed (a kill at a named point; the worker sees its task process die and Temporal
retries the task). Every attempt appends ``attempt resumed_epoch resumed_step`` (or
``attempt - -``) to ``cfg["log"]`` when it starts, so a test knows where it resumed.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np

from sdk import current_task

BATCHES = 8     # per epoch
BATCH = 8
EPOCHS = 3
SLOW = 0.03     # seconds per batch: a checkpoint commits before the next is due


def log_start(cfg: dict[str, Any], resumed: tuple[int, int] | None) -> None:
    words = ("-", "-") if resumed is None else resumed
    with open(cfg["log"], "a") as f:
        f.write(f"{current_task().attempt} {words[0]} {words[1]}\n")


def after_batch(cfg: dict[str, Any], done: int) -> None:
    """Called after the ``done``-th batch (counted over all epochs) of an attempt."""
    time.sleep(SLOW)
    ctx = current_task()
    kills = cfg["kills"]
    if ctx.attempt > len(kills) or done < kills[ctx.attempt - 1]:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:   # die only once this attempt committed one
        ref = ctx.heartbeat_details().get("checkpoint", {})
        if ref and not ref.get("restored"):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.02)
    raise RuntimeError("no checkpoint committed within 30 s")


def data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCHES * BATCH, 6)).astype("float32")
    y = (x @ rng.standard_normal((6, 1)) + 0.1 * rng.standard_normal((len(x), 1))).astype("float32")
    return x, y


# -- Keras ---------------------------------------------------------------------------------

def keras_fit(cfg: dict[str, Any]) -> dict[str, Any]:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras
    import tensorflow as tf

    from sdk.integrations.keras import CrowdComputeCallback

    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg["seed"])
    tf.config.experimental.enable_op_determinism()
    x, y = data(cfg["seed"])
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.AdamW(0.01), loss="mse")
    cb = CrowdComputeCallback()

    class Probe(keras.callbacks.Callback):  # after cb: sees where it resumed
        def on_train_begin(self, logs: Any = None) -> None:
            log_start(cfg, cb.resumed_from)

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            after_batch(cfg, self.epoch * BATCHES + batch + 1)

    fit: dict[str, Any] = {"epochs": EPOCHS, "callbacks": [cb, Probe()], "verbose": 0}
    if cfg.get("validation"):
        fit["validation_data"] = (x[:16], y[:16])
    if cfg["input"] == "dataset":
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=cfg["seed"])
        history = model.fit(ds.batch(BATCH), **fit)
    elif cfg["input"] == "numpy":
        history = model.fit(x, y, batch_size=BATCH, shuffle=True, **fit)
    else:
        def batches() -> Any:
            rng = np.random.default_rng(cfg["seed"] + 1)   # its own RNG, not the global one
            while True:
                idx = rng.integers(0, len(x), BATCH)
                yield x[idx], y[idx]

        history = model.fit(batches(), steps_per_epoch=BATCHES, **fit)
    return {"variables": [v.numpy() for v in model.variables],
            "optimizer": [v.numpy() for v in model.optimizer.variables],
            "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
            "resumed_from": cb.resumed_from, "attempt": current_task().attempt}


# -- Lightning -------------------------------------------------------------------------------

def lightning_fit(cfg: dict[str, Any]) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch

    from sdk.integrations.lightning import CrowdComputeCallback
    from sdk.integrations.torch import ResumableDataLoader

    pl.seed_everything(cfg["seed"], verbose=False)
    x, y = data(cfg["seed"])
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
                                           torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            xb, yb = batch
            return torch.nn.functional.mse_loss(self.net(xb), yb)

        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            xb, yb = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(xb), yb))

        def configure_optimizers(self) -> Any:
            opt = torch.optim.AdamW(self.parameters(), lr=0.01)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)]

    cb = CrowdComputeCallback()

    class Probe(pl.Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            log_start(cfg, cb.resumed_from)

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            after_batch(cfg, trainer.current_epoch * BATCHES + batch_idx + 1)

    model = Net()
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, deterministic=True,
                         callbacks=[cb, Probe()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    val = (torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(16)), batch_size=8)
           if cfg.get("validation") else None)
    trainer.fit(model, ResumableDataLoader(dataset, batch_size=BATCH, shuffle=True), val)
    opt = trainer.optimizers[0].state_dict()
    return {"params": [p.detach().numpy().copy() for p in model.parameters()],
            "optimizer": [t.numpy().copy() for s in opt["state"].values() for t in s.values()],
            "lr": trainer.lr_scheduler_configs[0].scheduler.get_last_lr(),
            "global_step": trainer.global_step,
            "resumed_from": cb.resumed_from, "attempt": current_task().attempt}


# -- a plain PyTorch loop ----------------------------------------------------------------------

def torch_loop(cfg: dict[str, Any]) -> dict[str, Any]:
    """The recipe of docs/integrations.md: state dicts plus the loader's position."""
    import torch

    from sdk.integrations.torch import ResumableDataLoader

    torch.manual_seed(cfg["seed"])
    x, y = data(cfg["seed"])
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    loader = ResumableDataLoader(dataset, batch_size=BATCH, shuffle=True,
                                 num_workers=cfg.get("workers", 0))
    ctx = current_task()
    state = ctx.restore()
    start, resumed = 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        loader.load_state_dict(state["loader"])
        start, resumed = state["epoch"], (state["epoch"], state["loader"]["consumed"])
    log_start(cfg, resumed)
    for epoch in range(start, EPOCHS):
        for xb, yb in loader:
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ctx.checkpoint(lambda epoch=epoch: {"model": model.state_dict(), "opt": opt.state_dict(),
                                                "loader": loader.state_dict(), "epoch": epoch})
            after_batch(cfg, epoch * BATCHES + loader.state_dict()["consumed"])
    return {"params": [p.detach().numpy().copy() for p in model.parameters()],
            "optimizer": [t.numpy().copy() for s in opt.state_dict()["state"].values()
                          for t in s.values()],
            "resumed_from": resumed, "attempt": ctx.attempt}


# -- Hugging Face Trainer --------------------------------------------------------------------

def hf_train(cfg: dict[str, Any]) -> dict[str, Any]:
    """A 2-layer GPT-2 from a config (nothing downloaded) on synthetic token sequences."""
    import torch
    import transformers as hf

    from sdk.integrations.transformers import CrowdComputeCallback

    hf.set_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    tokens = torch.from_numpy(rng.integers(0, 32, (BATCHES * BATCH, 12)))
    dataset = [{"input_ids": t, "labels": t} for t in tokens]
    config = hf.GPT2Config(vocab_size=32, n_positions=12, n_embd=16, n_layer=2, n_head=2,
                           bos_token_id=0, eos_token_id=0, resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.2)
    model = hf.GPT2LMHeadModel(config)
    args = hf.TrainingArguments(
        output_dir=str(cfg["out"]), num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH,
        learning_rate=5e-3, weight_decay=0.01, optim="adamw_torch", lr_scheduler_type="linear",
        seed=cfg["seed"], save_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
        gradient_accumulation_steps=cfg.get("accumulate", 1))
    cb = CrowdComputeCallback()

    class Probe(hf.TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = cb.resumed_from
            log_start(cfg, None if step is None else (step // BATCHES, step % BATCHES))

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            after_batch(cfg, state.global_step)

    trainer = hf.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[cb, Probe()])
    trainer.train(resume_from_checkpoint=cb.resume_from_checkpoint(trainer))
    opt = trainer.optimizer.state_dict()
    return {"params": [p.detach().numpy().copy() for p in model.parameters()],
            "optimizer": [t.numpy().copy() for s in opt["state"].values() for t in s.values()],
            "lr": trainer.lr_scheduler.get_last_lr(), "global_step": trainer.state.global_step,
            "resumed_from": cb.resumed_from, "attempt": current_task().attempt}
