"""sdk.integrations.transformers: a Trainer.train of a 2-layer GPT-2 built from a config,
its task process SIGKILLed twice mid-epoch through a real job, ends bit-identical to an
uninterrupted run (weights, AdamW moments, LR schedule, global step)."""

from __future__ import annotations

from pathlib import Path

import integration_tasks
import pytest
from _integrations import assert_killed_twice_mid_epoch, killed_and_whole, same_arrays

import sdk

pytestmark = pytest.mark.timeout(300)


async def test_train_killed_twice_resumes_bit_identical(worker: None, conn: sdk.Connection,
                                                       tmp_path: Path) -> None:
    ((got, want, starts),) = await killed_and_whole(
        integration_tasks.hf_train, [{"seed": 5, "out": str(tmp_path / "out")}], tmp_path)
    assert_killed_twice_mid_epoch(starts)
    assert (got["attempt"], want["attempt"]) == (3, 1)
    assert got["resumed_from"] == int(starts[2][1]) * 8 + int(starts[2][2])
    assert same_arrays(got["params"], want["params"])
    assert same_arrays(got["optimizer"], want["optimizer"])
    assert (got["lr"], got["global_step"]) == (want["lr"], want["global_step"])
    assert want["global_step"] == integration_tasks.EPOCHS * integration_tasks.BATCHES


def test_gradient_accumulation_resumes_exactly(tmp_path: Path) -> None:
    # in this process (run_local): the first attempt stops after 4 checkpoints (optimizer
    # steps), mid-epoch, and the second resumes through the same restore path
    cfg = {"seed": 2, "accumulate": 2, "kills": [], "log": str(tmp_path / "log"),
           "out": str(tmp_path / "out")}
    want = sdk.run_local(integration_tasks.hf_train, cfg, checkpoint_interval=0)
    got = sdk.run_local(integration_tasks.hf_train, cfg, checkpoint_interval=0,
                        interrupt_after_checkpoints=5)
    assert (got["resumed_from"], want["global_step"]) == (5, 12)
    assert same_arrays(got["params"], want["params"])
    assert same_arrays(got["optimizer"], want["optimizer"])


def test_without_the_trainer_in_a_task_it_refuses_to_train(tmp_path: Path) -> None:
    import transformers as hf

    from sdk.integrations.transformers import CrowdComputeCallback

    def train(_: object) -> None:
        model = hf.GPT2LMHeadModel(hf.GPT2Config(vocab_size=8, n_positions=4, n_embd=8,
                                                 n_layer=1, n_head=1))
        args = hf.TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none",
                                    use_cpu=True, save_strategy="no", disable_tqdm=True)
        data = [{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}] * 2
        hf.Trainer(model=model, args=args, train_dataset=data,
                   callbacks=[CrowdComputeCallback()]).train()

    with pytest.raises(RuntimeError, match="resume_from_checkpoint=callback"):
        sdk.run_local(train, None, checkpoint_interval=60)
