"""Random network weights for tests, shared by several test modules."""

import jax
import jax.numpy as jnp
import numpy as np


def random_params(net, x, seed=0, scale=1.0):
    """Random weights of the right shapes (``jax.eval_shape``: nothing is compiled).

    Kernels get N(0, scale^2 / fan_in), 1-D parameters N(0, 0.01 scale^2): every output
    layer is non-zero, unlike the zero-initialized last layers of the vector networks.
    """
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), x, jnp.zeros(x.shape[0])))
    rng = np.random.default_rng(seed)

    def draw(leaf):
        fan_in = np.prod(leaf.shape[:-1]) if leaf.ndim > 1 else 100.0
        return jnp.asarray(rng.normal(size=leaf.shape) * scale / np.sqrt(fan_in), jnp.float32)

    return jax.tree.map(draw, shapes["params"])
