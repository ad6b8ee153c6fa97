"""Our models decode through the data converter's cached field plan exactly as
Temporal's generic dataclass conversion decodes them."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from temporalio.converter import DefaultPayloadConverter

import workflows.models as models
from sdk._values import ValuePayloadConverter
from workflows.models import (
    BatchProgress,
    JobInput,
    JobProgress,
    RunTaskInput,
    TaskOptions,
    TaskProgress,
)

SAMPLES = [
    JobInput(job_id="j", fn="m:f", items=[1, [2, {"a": None}]], item_count=3,
             options=TaskOptions(max_attempts=2, checkpoint_interval=3.5, keep="final",
                                 warm_start_from="old", return_exceptions=True)),
    JobProgress("j", 3, {"running": 1, "pending": 2}, [TaskProgress(1, "j:1", "running", 2)],
                [BatchProgress("j--batch-0", 0, 3, "running")], batch_size=3),
    RunTaskInput("j", 1, "m:f", "", checkpoint_every_steps=4, heartbeat_timeout=8.0),
]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_models_round_trip_as_the_generic_converter_does(value: object) -> None:
    ours, generic = ValuePayloadConverter(), DefaultPayloadConverter()
    payloads = generic.to_payloads([value])
    assert ours.to_payloads([value]) == payloads  # the wire format is Temporal's JSON
    decoded = ours.from_payloads(payloads, [type(value)])[0]
    assert decoded == generic.from_payloads(payloads, [type(value)])[0] == value
    # Nested models come back as models, not dicts.
    assert all(not isinstance(getattr(decoded, f.name), dict) or f.name == "counts"
               for f in dataclasses.fields(decoded))


def test_every_model_decodes_from_its_defaults() -> None:
    ours, generic = ValuePayloadConverter(), DefaultPayloadConverter()
    for _, cls in inspect.getmembers(models, dataclasses.is_dataclass):
        required = [f for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        value = cls(**{f.name: _sample(f.type) for f in required})
        payloads = generic.to_payloads([value])
        assert ours.from_payloads(payloads, [cls])[0] == value, cls.__name__


def test_unknown_fields_are_ignored_and_missing_ones_default() -> None:
    ours = ValuePayloadConverter()
    payloads = DefaultPayloadConverter().to_payloads([{"job_id": "j", "index": 2, "fn": "m:f",
                                                       "payload": "", "later_field": 1}])
    assert ours.from_payloads(payloads, [RunTaskInput])[0] == RunTaskInput("j", 2, "m:f", "")


def _sample(annotation: str) -> object:
    return {"str": "x", "int": 1, "list[str]": [], "list[Any]": []}[annotation]
