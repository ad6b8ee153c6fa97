"""TensorFlow variables, tensors and Keras weights round-trip bit for bit."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from checkpoint._capture import capture  # noqa: E402
from checkpoint._delta import decode, encode, snapshots_equal  # noqa: E402

DTYPES = [tf.float32, tf.float64, tf.float16, tf.bfloat16, tf.int32, tf.int64, tf.uint8, tf.bool]


def _round(previous, current):
    parts = encode(previous, current)
    return decode([(p.data, p.codec) for p in parts], previous)


def _bits(value) -> bytes:
    return np.ascontiguousarray(np.asarray(value.numpy())).reshape(-1).view(np.uint8).tobytes()


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=3).map(tuple), st.booleans(), st.integers(0, 99))
def test_variable_round_trip(dtype, shape, trainable, seed):
    rng = np.random.default_rng(seed)
    value = tf.cast(rng.standard_normal(shape) * 10, dtype)
    var = tf.Variable(value, trainable=trainable, name="weights")
    back = _round(None, capture({"v": var, "t": value}))
    restored = back.to_state()
    assert isinstance(restored["v"], tf.Variable) is True
    assert (restored["v"].dtype, tuple(restored["v"].shape), restored["v"].trainable) == (dtype, shape, trainable)
    assert _bits(restored["v"]) == _bits(var)
    assert isinstance(restored["t"], tf.Variable) is False
    assert _bits(restored["t"]) == _bits(value)


def test_variable_delta_chain():
    var = tf.Variable(tf.zeros((300, 64)))
    previous = capture({"v": var})
    restored = _round(None, previous)
    for step in range(3):
        var.scatter_nd_update([[step], [step + 100]], tf.ones((2, 64)) * (step + 1))
        current = capture({"v": var}, previous=previous)
        restored = _round(restored, current)
        assert snapshots_equal(restored, current) is True
        previous = current
    assert np.array_equal(restored.to_state()["v"].numpy(), var.numpy()) is True


def test_keras_model_is_captured_as_weight_list():
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    restored = _round(None, capture({"model": model})).to_state()["model"]
    expected = model.get_weights()
    assert isinstance(restored, list) is True
    assert [w.tobytes() for w in restored] == [w.tobytes() for w in expected]
    clone = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    clone.set_weights(restored)
    assert [w.tobytes() for w in clone.get_weights()] == [w.tobytes() for w in expected]
