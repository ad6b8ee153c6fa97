"""torch tensors, modules and optimizers: raw-byte round trips and version-counter deltas."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoint import CheckpointManager, StaleCapture
from checkpoint._capture import BufferPool, capture, verify
from checkpoint._delta import decode, encode, snapshots_equal
from checkpoint.codecs import torch_codec

DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
          torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
          torch.complex128]
DTYPES += [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)]


def _round(previous, current):
    parts = encode(previous, current)
    return parts, decode([(p.data, p.codec) for p in parts], previous)


def _bits(t: torch.Tensor) -> bytes:
    flat = t.detach().resolve_conj().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _make(dtype, shape, seed, transpose):
    gen = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=gen) * 10).to(dtype)
    if transpose and t.dim() >= 2:
        t = t.transpose(0, 1)
    return t


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    st.integers(0, 1000),
    st.booleans(),
)
def test_tensor_round_trip_is_bit_exact(dtype, shape, seed, transpose):
    tensor = _make(dtype, shape, seed, transpose)
    snap = capture({"t": tensor})
    _, back = _round(None, snap)
    assert snapshots_equal(back, snap) is True
    restored = back.to_state()["t"]
    assert (restored.dtype, tuple(restored.shape)) == (tensor.dtype, tuple(tensor.shape))
    assert _bits(restored) == _bits(tensor)


def test_bfloat16_is_stored_as_raw_uint16():
    tensor = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
    snap = capture({"t": tensor})
    assert snap.leaves[0].data.tobytes() == tensor.view(torch.int16).numpy().tobytes()


def test_non_contiguous_zero_d_and_conj():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"strided": base[:, ::2], "scalar": torch.tensor(5), "conj": torch.tensor([1 + 2j]).conj()}
    restored = capture(state).to_state()
    assert restored["strided"].tolist() == base[:, ::2].tolist()
    assert restored["strided"].is_contiguous() is True
    assert (restored["scalar"].dim(), restored["scalar"].item()) == (0, 5)
    assert restored["conj"].tolist() == [1 - 2j]


def test_requires_grad_and_parameter_are_kept():
    param = torch.nn.Parameter(torch.randn(3))
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    leaf = torch.randn(2, requires_grad=True)
    restored = capture({"p": param, "f": frozen, "l": leaf}).to_state()
    assert (type(restored["p"]), restored["p"].requires_grad) == (torch.nn.Parameter, True)
    assert (type(restored["f"]), restored["f"].requires_grad) == (torch.nn.Parameter, False)
    assert (type(restored["l"]), restored["l"].requires_grad) == (torch.Tensor, True)


def test_module_and_optimizer_restore_as_state_dicts():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    restored = capture({"model": model, "opt": opt}).to_state()
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    fresh.load_state_dict(restored["model"])
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    fresh_opt.load_state_dict(restored["opt"])
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b) is True
    assert fresh_opt.param_groups[0]["lr"] == 0.01
    assert torch.equal(fresh_opt.state[fresh_opt.param_groups[0]["params"][0]]["exp_avg"],
                       opt.state[opt.param_groups[0]["params"][0]]["exp_avg"]) is True


def test_unchanged_tensors_are_not_read_and_cost_nothing(monkeypatch):
    frozen = torch.nn.Linear(512, 512)
    live = torch.nn.Linear(512, 512)
    pool = BufferPool()
    first = capture({"frozen": frozen, "live": live}, pool=pool)
    with torch.no_grad():
        live.weight.add_(1.0)
    copied = []
    original = torch_codec.copy_into
    monkeypatch.setattr(torch_codec, "copy_into", lambda t, out, **kw: copied.append(tuple(t.shape)) or original(t, out, **kw))
    second = capture({"frozen": frozen, "live": live}, previous=first, pool=pool)
    assert copied == [(512, 512)]
    assert [leaf.unchanged for leaf in second.leaves] == [True, True, False, True]
    parts, back = _round(first, second)
    assert snapshots_equal(back, second) is True
    assert len(parts) == 2
    assert parts[1].raw_size == 512 * 512 * 4


def test_writes_through_version_counter_are_seen():
    tensor = torch.zeros(1000)
    first = capture({"t": tensor})
    tensor[10] = 3.0
    second = capture({"t": tensor}, previous=first)
    assert second.leaves[0].unchanged is False
    assert second.to_state()["t"][10].item() == 3.0


def test_writes_past_the_version_counter_are_copied(caplog):
    """``.data`` and numpy-view writes leave ``_version`` alone: the capture's spot check
    sees a whole-tensor write in the pause, copies the tensor, and copies it from then on."""
    caplog.set_level(logging.INFO, logger="checkpoint")
    ema, live = torch.nn.Linear(256, 256), torch.nn.Linear(256, 256)
    pool = BufferPool()
    state = {"ema": ema, "live": live}
    first = capture(state, pool=pool)
    version = ema.weight._version
    ema.weight.data.mul_(0.9).add_(live.weight.data, alpha=0.1)   # an EMA update through .data
    ema.bias.detach().numpy()[:] += 1.0                            # a write through numpy
    assert ema.weight._version == version
    second = capture(state, previous=first, pool=pool)
    assert [leaf.unchanged for leaf in second.leaves] == [False, False, True, True]
    back = second.to_state()
    assert torch.equal(back["ema"]["weight"], ema.weight) and torch.equal(back["ema"]["bias"], ema.bias)
    assert pool.distrusted == {"ema/weight", "ema/bias"}
    assert "2 tensor(s) changed without their version counter" in caplog.text
    assert "'ema/weight', 'ema/bias'; copied at every capture" in caplog.text
    verify(second, pool)   # nothing skipped was written: the snapshot stands
    third = capture(state, previous=second, pool=pool)   # nothing written at all
    assert [leaf.unchanged for leaf in third.leaves] == [False, False, True, True]


def test_many_distrusted_tensors_make_one_log_record(caplog):
    """Seen in the pause nothing is lost (the tensors are copied): one INFO record, not a
    warning per tensor."""
    caplog.set_level(logging.INFO, logger="checkpoint")
    tensors = {f"t{i}": torch.randn(64, 64) for i in range(8)}
    pool = BufferPool()
    first = capture(tensors, pool=pool)
    for t in tensors.values():
        t.numpy()[:] += 1.0
    capture(tensors, previous=first, pool=pool)
    [record] = [r for r in caplog.records if "version counter" in r.getMessage()]
    assert "8 tensor(s)" in record.getMessage() and "'t4' and 3 more" in record.getMessage()
    assert record.levelno == logging.INFO


def test_a_sparse_write_past_the_counter_refuses_the_snapshot(manager: CheckpointManager):
    """One element written through ``.data`` escapes the spot check: the writer compares
    every skipped byte before storing, refuses the snapshot (nothing stored), and the next
    capture copies the tensor, so what is committed and restored is exact."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 4096), torch.nn.Linear(4096, 8))
    writer = manager.open_attempt("job", "t").writer
    state = {"model": model}
    assert writer.save(writer.capture(state)).seq == 1
    model[0].weight.data[1000, 17] += 1.0   # not among the ~1024 bytes the spot check reads
    stale = writer.capture(state)
    assert all(leaf.unchanged for leaf in stale.leaves)
    with pytest.raises(StaleCapture) as err:
        writer.save(stale)
    assert err.value.paths == ["model/0.weight"]
    writer.pool.release(stale)
    assert manager.restore("job", "t").seq == 1   # nothing of the refused snapshot committed
    again = writer.capture(state)
    assert [leaf.unchanged for leaf in again.leaves] == [False, True, True, True]
    assert writer.save(again).seq == 2            # the refused snapshot took no seq, wrote no blob
    restored = manager.restore("job", "t")
    assert restored.seq == 2
    assert all(torch.equal(restored.state["model"][k], v) for k, v in model.state_dict().items())


def test_a_visible_write_after_the_capture_refuses_once_and_trusts_on(manager: CheckpointManager):
    """A write the counter sees, made after a capture skipped the tensor, cannot be told
    from a stale buffer: that snapshot is refused, but the tensor stays trusted."""
    frozen, live = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)
    writer = manager.open_attempt("job", "t").writer
    state = {"frozen": frozen, "live": live}
    writer.save(writer.capture(state))
    snap = writer.capture(state)
    assert [leaf.unchanged for leaf in snap.leaves][:2] == [True, True]
    with torch.no_grad():
        frozen.weight.add_(1.0)          # after the capture: bumps the version counter
    with pytest.raises(StaleCapture):
        writer.save(snap)
    writer.pool.release(snap)
    assert writer.pool.distrusted == set()
    copied = writer.capture(state)
    assert [leaf.unchanged for leaf in copied.leaves][:2] == [False, True]
    writer.save(copied)
    skipped = writer.capture(state)
    assert [leaf.unchanged for leaf in skipped.leaves][:2] == [True, True]
    writer.save(skipped)
    restored = manager.restore("job", "t").state
    assert torch.equal(restored["frozen"]["weight"], frozen.weight)


def test_tied_weights_are_stored_once_and_restored_as_one_tensor(manager: CheckpointManager):
    """A state_dict holds a tied weight under two names (two detached tensors of one
    parameter): it is stored once, and both names restore to one tensor."""
    torch.manual_seed(0)
    embed = torch.nn.Embedding(1000, 64)
    head = torch.nn.Linear(64, 1000, bias=False)
    head.weight = embed.weight
    model = torch.nn.Sequential(embed, torch.nn.Linear(64, 64), head)
    writer = manager.open_attempt("job", "t").writer
    snap = writer.capture({"model": model, "step": 3})
    assert [leaf.path for leaf in snap.leaves] == ["model/0.weight", "model/1.weight", "model/1.bias", "step"]
    assert snap.raw_nbytes < 1000 * 64 * 4 + 70 * 64 * 4
    writer.save(snap)
    with torch.no_grad():
        embed.weight[7] += 1.0
    writer.save(writer.capture({"model": model, "step": 4}))   # a delta over the same tree
    restored = manager.restore("job", "t").state
    assert restored["step"] == 4
    weights = restored["model"]
    assert weights["2.weight"] is weights["0.weight"]
    assert torch.equal(weights["0.weight"], embed.weight)
    fresh = torch.nn.Sequential(torch.nn.Embedding(1000, 64), torch.nn.Linear(64, 64),
                                torch.nn.Linear(64, 1000, bias=False))
    fresh[2].weight = fresh[0].weight
    fresh.load_state_dict(weights)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_views_of_one_tensor_are_named_once_in_a_warning(manager: CheckpointManager, caplog):
    """Leaves that overlap in memory but are different views cannot share memory again
    after a restore: the first capture says so, once; their values are still exact."""
    buffer = torch.arange(16.0)
    state = {"buffer": buffer, "head": buffer[:4], "grid": buffer.view(4, 4), "apart": torch.ones(3)}
    writer = manager.open_attempt("job", "t").writer
    with caplog.at_level(logging.WARNING, logger="checkpoint"):
        writer.save(writer.capture(state))
        buffer[0] = 5.0
        writer.save(writer.capture(state))
    told = [r.getMessage() for r in caplog.records if "share memory" in r.getMessage()]
    assert len(told) == 1
    assert "2 pair(s)" in told[0] and "buffer and head" in told[0] and "grid" in told[0]
    assert "apart" not in told[0]
    restored = manager.restore("job", "t").state
    assert restored["head"][0].item() == 5.0 and restored["grid"][0, 0].item() == 5.0


def test_chain_of_training_steps_is_exact():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    model[0].requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    pool = BufferPool()
    state = {"model": model, "opt": opt, "step": 0}
    previous = capture(state, pool=pool)
    _, restored = _round(None, previous)
    for step in range(1, 5):
        model(torch.randn(16, 64)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        state["step"] = step
        current = capture(state, previous=previous, pool=pool)
        _, restored = _round(restored, current)
        assert snapshots_equal(restored, current) is True
        pool.release(previous)
        previous = current
    final = restored.to_state()
    assert final["step"] == 4
    assert all(torch.equal(final["model"][k], v) for k, v in model.state_dict().items())


def test_missing_device_falls_back_to_cpu_with_warning():
    meta = torch_codec.describe(torch.arange(3, dtype=torch.int32))
    meta["device"] = "cuda:63"
    with pytest.warns(UserWarning, match="cuda:63"):
        restored = torch_codec.restore(meta, np.arange(3, dtype=np.int32).view(np.uint8))
    assert (restored.device.type, restored.tolist()) == ("cpu", [0, 1, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_round_trip():
    model = torch.nn.Linear(256, 128).cuda()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(8, 256, device="cuda")).sum().backward()
    opt.step()
    state = {"model": model, "opt": opt, "bf16": torch.randn(33, 7, device="cuda").to(torch.bfloat16).t()}
    pool = BufferPool()
    first = capture(state, pool=pool)
    assert first.leaves[0].meta["device"] == "cuda:0"
    with torch.no_grad():
        model.bias.add_(1)
    second = capture(state, previous=first, pool=pool)
    assert [leaf.unchanged for leaf in second.leaves[:2]] == [True, False]
    _, base = _round(None, first)
    _, back = _round(base, second)
    assert snapshots_equal(back, second) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = back.to_state()
    assert restored["model"]["bias"].device.type == "cuda"
    assert torch.equal(restored["model"]["bias"], model.bias.detach()) is True
    assert torch.equal(restored["bf16"], state["bf16"]) is True
    verify(second, pool)   # every skipped byte compared through host copies: the same
    model.weight.data[0, 0] += 1   # past the version counter: no spot check on a device
    third = capture(state, previous=second, pool=pool)
    assert third.leaves[0].unchanged is True
    with pytest.raises(StaleCapture):
        verify(third, pool)


LAYOUTS = [
    lambda: torch.randn(33, 7, dtype=torch.bfloat16),
    lambda: torch.rand(5, 9) > 0.5,
    lambda: torch.randn(6, 4, dtype=torch.complex64).conj(),
    lambda: torch.randn(8, 6)[:, ::2],
    lambda: torch.randn(5, 7).T,
    lambda: torch.tensor(1.25, dtype=torch.float64),
    lambda: torch.randn(11).neg(),
    lambda: torch.randint(0, 100, (4, 4), dtype=torch.int16),
]


@pytest.mark.parametrize("make", LAYOUTS)
def test_differs_compares_the_bytes_a_capture_stores(make):
    """``differs`` reads the same bytes ``copy_into`` writes (conjugated, negated, strided,
    0-d, bool): none against its own copy, one flipped bit in the last byte found."""
    t = make()
    nbytes = torch_codec.describe(t)["nbytes"]
    out = np.empty(nbytes, dtype=np.uint8)
    torch_codec.copy_into(t, out)
    assert not torch_codec.differs(t, out) and not torch_codec.differs(t, out, quick=True)
    out[-1] ^= 1
    assert torch_codec.differs(t, out)
    out[-1] ^= 1
    out[0] ^= 1   # byte 0 is in the spot check's sample, where it samples at all
    assert torch_codec.differs(t, out, quick=True) is (t.is_contiguous() and not t.is_conj()
                                                       and not t.is_neg())


@pytest.mark.parametrize("make", LAYOUTS)
def test_copy_into_numpy_buffer_is_bit_exact_for_every_layout(make):
    t = make()
    meta = torch_codec.describe(t)
    out = np.full(meta["nbytes"] + 3, 0xAB, dtype=np.uint8)   # a larger pooled buffer
    torch_codec.copy_into(t, out)
    expected = t.detach().resolve_conj().resolve_neg().contiguous()
    back = torch_codec.restore(meta, out[: meta["nbytes"]])
    assert back.dtype == t.dtype
    assert tuple(back.shape) == tuple(t.shape)
    assert back.reshape(-1).view(torch.uint8).tolist() == expected.reshape(-1).view(torch.uint8).tolist()
    assert out[meta["nbytes"]:].tolist() == [0xAB] * 3
