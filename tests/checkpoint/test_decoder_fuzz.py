"""Decoder fuzz: mutated real parts and crafted bombs end as CorruptCheckpoint, bounded.

Only ``CorruptCheckpoint`` leaves ``decode`` and ``to_state`` (never one caused
by a failed allocation), each attempt takes under a second, its traced peak
stays within twice the recorded raw size of the link and its previous state
plus 1 MiB, and nothing is imported because stored data names it. The bombs
run in a subprocess whose address space is capped, so a regression fails an
allocation there instead of taking this machine's memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import decoder_fuzz as fuzz
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoint._delta import decode, snapshots_equal
from checkpoint.codecs import NAMES, codec_for
from checkpoint.errors import CorruptCheckpoint


def _warm_registered_codecs() -> None:
    """Import and use once every installed array codec the hostile values name.

    A leaf naming a registered framework (``fw: "torch"``, one of the hostile
    values) makes ``to_state`` import its codec and the framework: the
    registry is explicit (``checkpoint.codecs.NAMES``), and a torch state must
    restore in a process that has not imported torch yet. That one-time import
    (6 s and 55 MB traced for torch here) and the framework's lazy set-up are
    not the decoder's allocations; inside a measured attempt they failed the
    bound, on the first such attempt only (a flaky failure).
    """
    for name in (n for n in NAMES if n in fuzz.NASTY):
        try:
            codec = codec_for(name)
        except ImportError:
            continue   # not installed: a leaf naming it fails to decode
        if name == "torch":
            import torch

            array = torch.arange(4, dtype=torch.float32)
            meta = codec.describe(array)
            data = np.zeros(meta["nbytes"], dtype=np.uint8)
            codec.copy_into(array, data)
            assert torch.equal(codec.restore(meta, data), array) is True


@pytest.fixture(scope="module", autouse=True)
def traced() -> Iterator[None]:
    _warm_registered_codecs()
    tracemalloc.start()
    yield
    tracemalloc.stop()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(fuzz.links()) - 1), st.sampled_from(fuzz.TARGETS), st.sampled_from(fuzz.KINDS),
       st.integers(0, 2**32 - 1), st.booleans())
def test_mutated_real_parts_only_raise_corrupt_checkpoint(link, target, kind, seed, triples):
    chosen = fuzz.links()[link]
    outcome = fuzz.check(chosen, fuzz.mutated(chosen, target, kind, seed, triples))
    assert outcome.startswith(("CorruptCheckpoint: ", "decoded: ")) is True


def test_seeded_campaign_reaches_every_stage_of_the_decoder():
    counts = fuzz.campaign(seed=1, per_target=150)
    assert sum(counts.values()) == 4 * 150
    stages = {outcome for _case, outcome in counts}
    # The mutations get past the CRCs and the pickle checks into the layout, size
    # and leaf checks (else the fuzz would only ever test the first gate).
    for needed in ("CorruptCheckpoint: crc", "CorruptCheckpoint: index pickle",
                   "CorruptCheckpoint: index layout", "CorruptCheckpoint: leaf check",
                   "CorruptCheckpoint: decompression"):
        assert needed in stages, sorted(stages)
    per_target = {case.split("/")[0]: set() for case, _ in counts}
    for case, outcome in counts:
        per_target[case.split("/")[0]].add(outcome)
    assert all(len(outcomes) >= 2 for outcomes in per_target.values()) is True


@pytest.mark.parametrize("link", fuzz.links(), ids=lambda link: link.name)
def test_recorded_raw_sizes_bound_and_check_every_part(link):
    assert snapshots_equal(decode(list(link.parts), link.previous), link.expected) is True
    assert snapshots_equal(decode([p[:2] for p in link.parts], link.previous), link.expected) is True
    for k in range(len(link.parts)):
        for wrong in (link.parts[k][2] - 1, link.parts[k][2] + 1):
            parts = list(link.parts)
            parts[k] = (parts[k][0], parts[k][1], wrong)
            with pytest.raises(CorruptCheckpoint):
                decode(parts, link.previous)


@pytest.fixture(scope="module")
def bomb_report() -> dict[str, dict[str, Any]]:
    here = Path(__file__).resolve().parent
    run = subprocess.run([sys.executable, str(here / "decoder_fuzz.py"), "bombs"], capture_output=True,
                         text=True, timeout=120, check=True)
    report: dict[str, dict[str, Any]] = json.loads(run.stdout)
    return report


@pytest.mark.parametrize("name", list(fuzz.bombs()))
def test_crafted_bomb_is_refused_within_bounds(bomb_report, name):
    case = bomb_report[name]
    assert case["outcome"].startswith("CorruptCheckpoint: "), case
    assert case["seconds"] < fuzz.TIME_LIMIT
    assert case["peak"] <= case["budget"], case
    assert case["rss_growth"] <= case["budget"] + 32 * 1024 * 1024, case
    assert case["imported"] == []


def test_tree_naming_an_unimported_module_does_not_import_it():
    assert "this" not in sys.modules   # importing it would print the Zen of Python
    parts = fuzz.bombs()["tree naming a class in a module never imported (this:Zen)"]()
    snap = decode(parts, None)
    with pytest.raises(CorruptCheckpoint, match="not imported"):
        snap.to_state()
    assert "this" not in sys.modules


# A base and a delta written by the encoder before the decoder was bounded
# (index layout v1), with compression "zstd": today's decoder still reads them.
_V1_BASE = ("28b52ffd648d009d090016d3412e40a9a803c330a6bb4df1b25205b6facbd06413d520dbd495b5c1331d3d2d67b7d64e4"
            "4c717c002f78d8c5ef13719350033003400dda4017dcf3dd775dd734b5689fa94bb79917d0dd4c7a07ec618f35719fd70a6"
            "93b268c87a06eae99c8536a3142118af01a2505501ded4a8ec1f6408519fbdb062b21f7a1d98291eceef9bb2a5364d979c7"
            "2663227f58275cdfca2be5ee9659b96c9e8cf99bf3ae1cc3154366fa0256d7abd4e49ec52e22e45ed52bb1b11771bd5390e"
            "cc160d36ac53ae21e522f5c23a6f36da71dd00fa9dc85258e70ff092d3fa4d4f363b44404c44120446291a7c9c421aa5585"
            "03934fac1c8ae6c18a3f3c7297f7c42bdbb72942241e5d0ce79a51b3709100055844c212e2e1048ed841d4d20d47203d881"
            "728730689b7d06abc160343b59748be9b022012801b7b4454c")
_V1_DELTA = ("28b52ffd64c000f50900a61345355085461d30332b1b7435b02b5ef16b157184defc4c3220bbf9aa11d2f65b90d8d734d6"
             "93ae939450b89c4c0363fbee2de2ff92adc937003500350093354673d631d383fae22793aa94cb666536dae212de262568"
             "c831a6307bb5d19b339d93a81deb17a7a567d61130cab040273c30445455d6295770c2313ab2ce1419ddb866037d11b21e"
             "ebdc4d092afb0d9803d4e70eac14d907bbede3b0e7e0f4bc29fb18a725e99153be047294e141f558d7b259a37ee695669a"
             "8435cb9575067dcadbe4644baf90530376a900bb54b84b51bbd4ee3ec25d47754dfbb0a83f47d3f7c869f566279b2b200b"
             "d75cfc04e082c00362b76094a142f5e99ef63046192254a7205ba2a69b097965940a7641e2359f7e39bdbb010f00620884"
             "8b52739302536db9069aeb0ae6af981034cbe48c617a9ef59693f194f9cdb4a7054ab7e0aa42")


def test_indexes_written_before_the_bounds_still_decode():
    base = decode([(bytes.fromhex(_V1_BASE), "zstd", 397)], None)
    delta = decode([(bytes.fromhex(_V1_DELTA), "zstd", 448)], base, against=(1, "ab" * 32))
    assert base.to_state()["w"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    state = delta.to_state()
    assert state["w"].tolist() == (np.arange(6, dtype=np.float32).reshape(2, 3) + 1).tolist()
    assert state["names"] == ["a", "b", "c"]
    assert state["cfg"] == {"lr": 0.2}
