"""A non-linear concept probe: a one-hidden-layer network of the attribute labels on the embedding.

A linear probe gives each attribute one direction for every image. An attribute the embedding
encodes non-linearly (by the size of a component rather than its sign, or differently for each
class) has no single direction, and a linear fit finds a weak or wrong one. The network
``z(x) = W_2^T tanh(W_1^T x + b_1) + b_2`` (``x`` the L2-normalised embedding, one logit per
attribute) is fitted by full-batch Adam on the sigmoid cross-entropy of the labels, with a small
L2 penalty on the weights.

Its use for explanation is the gradient: ``g_a(x) = dz_a/dx`` is the direction in which the
probe's evidence for attribute ``a`` grows fastest *at this embedding*. The ``"gradient"``
scorer of ``concept_relevance`` removes each embedding's component along its own unit gradient,
``x' = x - (x . u_a(x)) u_a(x)`` with ``u_a(x) = g_a(x) / |g_a(x)|``, from both images of the
pair and scores the similarity lost, ``s - cos(q', r')``. For a linear probe the gradient is the
same everywhere and this is the ``"removal"`` scorer with the probe's direction.

Like every probe of the labels, the network cannot tell an encoded attribute from one that only
co-occurs with it: both are decoded from the same evidence (``docs/attributes_shapes64.md``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

NETWORK_KEYS = ("w1", "b1", "w2", "b2")


def _logits(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


@functools.partial(jax.jit, static_argnames=("hidden", "steps"))
def _train(x, y, weights, key, learning_rate, weight_decay, *, hidden: int, steps: int):
    dim, num_attributes = x.shape[1], y.shape[1]
    k1, k2 = jax.random.split(key)
    params = {"w1": jax.random.normal(k1, (dim, hidden)) / jnp.sqrt(dim), "b1": jnp.zeros(hidden),
              "w2": jax.random.normal(k2, (hidden, num_attributes)) / jnp.sqrt(hidden),
              "b2": jnp.zeros(num_attributes)}
    optimizer = optax.adam(learning_rate)

    def loss(p):
        data = jnp.sum(weights * optax.sigmoid_binary_cross_entropy(_logits(p, x), y)) / x.shape[0]
        return data + weight_decay * (jnp.sum(p["w1"] ** 2) + jnp.sum(p["w2"] ** 2))

    def step(carry, _):
        p, state = carry
        updates, state = optimizer.update(jax.grad(loss)(p), state)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    return params


def fit_network(x: np.ndarray, y: np.ndarray, valid: np.ndarray, *, hidden: int, steps: int, learning_rate: float,
                weight_decay: float, seed: int) -> dict:
    """Fits the probe network (see the module docstring) on standardised inputs and folds the
    standardisation into the first layer, so the returned network reads the normalised embedding.

    Args:
      x: ``[N, D]`` L2-normalised embeddings (float64).
      y: ``[N, A]`` 0/1 labels.
      valid: ``[A]`` the attributes to fit (the others get no loss).
      hidden: the hidden layer's width.
      steps: full-batch Adam steps.
      learning_rate: Adam's step size.
      weight_decay: the L2 penalty on both weight matrices.
      seed: the initialisation's seed.

    Returns:
      ``{"w1": [D, H], "b1": [H], "w2": [H, A], "b2": [A]}`` as float64 NumPy arrays.
    """
    mean = x.mean(0)
    scale = max(float(np.sqrt(np.mean(np.sum((x - mean) ** 2, axis=1)))), 1e-12)  # one scalar: gradients keep their direction
    xs = (x - mean) / scale
    with jax.default_device(jax.devices("cpu")[0]):
        params = _train(jnp.asarray(xs, jnp.float32), jnp.asarray(y, jnp.float32),
                        jnp.asarray(np.broadcast_to(valid, y.shape), jnp.float32), jax.random.key(seed),
                        learning_rate, weight_decay, hidden=hidden, steps=steps)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    w1 = p["w1"] / scale
    return {"w1": w1, "b1": p["b1"] - mean @ w1, "w2": p["w2"], "b2": p["b2"]}


def logits_and_gradients(network: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The probe's logits ``[N, A]`` and their gradients ``[N, A, D]`` at the rows of ``x``."""
    w1, w2 = np.asarray(network["w1"], np.float64), np.asarray(network["w2"], np.float64)
    h = np.tanh(x @ w1 + np.asarray(network["b1"], np.float64))  # [N, H]
    logits = h @ w2 + np.asarray(network["b2"], np.float64)
    return logits, np.einsum("dh,nh,ha->nad", w1, 1.0 - h**2, w2)


def check_network(network, dim: int, num_attributes: int, name: str) -> dict:
    """``network`` as float64 arrays, or a ValueError naming ``name`` and what is wrong."""
    if not isinstance(network, dict) or set(network) != set(NETWORK_KEYS):
        raise ValueError(f"{name} must hold exactly {NETWORK_KEYS}")
    out = {k: np.asarray(network[k], np.float64) for k in NETWORK_KEYS}
    hidden = out["b1"].shape[0] if out["b1"].ndim == 1 else -1
    expected = {"w1": (dim, hidden), "b1": (hidden,), "w2": (hidden, num_attributes), "b2": (num_attributes,)}
    for k in NETWORK_KEYS:
        if out[k].shape != expected[k] or not np.isfinite(out[k]).all():
            raise ValueError(f"{name}[{k!r}] must be a finite array of shape {expected[k]}, got {out[k].shape}")
    return out
