"""The global generators of a task's process: capture / restore / reseed (``activities._rng``)."""

from __future__ import annotations

import random

import numpy as np

from activities import _rng


def test_python_and_numpy_states_round_trip() -> None:
    random.seed(3), np.random.seed(3)
    states = _rng.capture()
    want = (random.random(), np.random.random(5).tobytes())
    _rng.reseed_all()
    _rng.restore(states)
    assert (random.random(), np.random.random(5).tobytes()) == want


def test_reseed_gives_fresh_draws_after_a_seeded_task() -> None:
    random.seed(0), np.random.seed(0)
    seeded = (random.random(), float(np.random.random()))
    random.seed(0), np.random.seed(0)
    _rng.reseed_all()
    assert (random.random(), float(np.random.random())) != seeded


def test_tensorflow_global_generator_round_trips() -> None:
    import tensorflow as tf

    tf.random.set_global_generator(tf.random.Generator.from_seed(11))
    states = _rng.capture()
    assert "tensorflow" in states
    want = tf.random.get_global_generator().normal([4]).numpy().tobytes()
    _rng.reseed_all()
    assert tf.random.get_global_generator().normal([4]).numpy().tobytes() != want
    _rng.restore(states)
    assert tf.random.get_global_generator().normal([4]).numpy().tobytes() == want


def test_keras_global_seed_generator_round_trips() -> None:
    import keras
    from keras.src.random.seed_generator import global_seed_generator

    global_seed_generator()  # made on first use of unseeded keras.random calls
    states = _rng.capture()
    assert "keras" in states
    want = keras.ops.convert_to_numpy(keras.random.normal([4])).tobytes()
    _rng.reseed_all()
    assert keras.ops.convert_to_numpy(keras.random.normal([4])).tobytes() != want
    _rng.restore(states)
    assert keras.ops.convert_to_numpy(keras.random.normal([4])).tobytes() == want
