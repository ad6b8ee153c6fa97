"""The global random number generators of a task's process: capture, restore, reseed.

Covered: Python's ``random``, NumPy's legacy global state, torch's CPU generator and
every CUDA device's generator (when CUDA is initialised), and TensorFlow's global
``tf.random.Generator`` plus Keras 3's global seed generator (when they exist).
Frameworks are looked up in ``sys.modules`` and never imported here, so a NumPy-only
worker needs neither torch nor TensorFlow. ``np.random.Generator`` and
``torch.Generator`` objects inside a task's state are leaves of the state itself.
"""

from __future__ import annotations

import random
import sys
from typing import Any


def capture() -> dict[str, Any]:
    """The current states of every global generator this process has."""
    out: dict[str, Any] = {"python": random.getstate()}
    np = sys.modules.get("numpy")
    if np is not None:
        out["numpy"] = np.random.get_state()
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.get_rng_state()
        if torch.cuda.is_initialized():
            out["torch_cuda"] = torch.cuda.get_rng_state_all()
    tf_gen = _tf_global_generator()
    if tf_gen is not None:
        out["tensorflow"] = (tf_gen.state.numpy(), int(tf_gen.algorithm))
    keras_gen = _keras_seed_generator()
    if keras_gen is not None:
        out["keras"] = keras_gen.state.numpy()
    return out


def restore(states: dict[str, Any]) -> None:
    """Put back what :func:`capture` returned (generators this process lacks are skipped)."""
    random.setstate(_as_python_state(states["python"]))
    np = sys.modules.get("numpy")
    if np is not None and "numpy" in states:
        np.random.set_state(states["numpy"])
    torch = sys.modules.get("torch")
    if torch is not None and "torch" in states:
        torch.set_rng_state(states["torch"])
        if "torch_cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["torch_cuda"])
    if "tensorflow" in states and "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        state, alg = states["tensorflow"]
        tf.random.set_global_generator(tf.random.Generator.from_state(state, alg))
    keras_gen = _keras_seed_generator()
    if keras_gen is not None and "keras" in states:
        keras_gen.state.assign(states["keras"])


# The states reseed_all() left: a generator still in that state was not drawn from since,
# so it is as fresh as a new process's and reseeding it (~0.1 ms for NumPy) is skipped.
_left: dict[str, Any] = {}


def reseed_all() -> None:
    """Fresh entropy for every global generator, as in a new process."""
    if random.getstate() != _left.get("python"):
        random.seed()
        _left["python"] = random.getstate()
    np = sys.modules.get("numpy")
    if np is not None:
        key, pos = np.random.get_state()[1:3]
        left = _left.get("numpy")
        if left is None or pos != left[1] or not np.array_equal(key, left[0]):
            np.random.seed()
            _left["numpy"] = np.random.get_state()[1:3]
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()  # CPU and, when initialised, every CUDA device
    if _tf_global_generator() is not None:
        tf = sys.modules["tensorflow"]
        tf.random.set_global_generator(tf.random.Generator.from_non_deterministic_state())
    keras_gen = _keras_seed_generator()
    if keras_gen is not None:
        import keras

        keras_gen.state.assign(keras.random.SeedGenerator().state.value)


def _as_python_state(state: Any) -> Any:
    # A state that went through a checkpoint may come back with lists for tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _tf_global_generator() -> Any | None:
    """TensorFlow's global generator if one was made (never creates it)."""
    if "tensorflow" not in sys.modules:
        return None
    mod = sys.modules.get("tensorflow.python.ops.stateful_random_ops")
    return getattr(mod, "global_generator", None) if mod is not None else None


def _keras_seed_generator() -> Any | None:
    """Keras 3's global ``SeedGenerator`` if one was made."""
    state = sys.modules.get("keras.src.backend.common.global_state")
    if state is None:
        return None
    return state.get_global_attribute("global_seed_generator")
