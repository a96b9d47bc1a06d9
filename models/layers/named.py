"""Parameter initialisers that carry logical axis names (Flax logical partitioning).

    nn.Dense(512, kernel_init=DENSE)                 # kernel axes ("embed", "mlp")
    nn.Conv(64, (3, 3), kernel_init=CONV)            # (None, None, "embed", "mlp")
    kernel_init=named(nn.initializers.normal(0.02), "embed", "heads", "head_dim")

config.mesh.rules map the names to mesh axes (train_lib/partitioning.py); the values
drawn are those of the wrapped initialiser.
"""

import flax.linen as nn


def named(init, *names):
  return nn.with_logical_partitioning(init, names)


DENSE = named(nn.initializers.lecun_normal(), "embed", "mlp")
CONV = named(nn.initializers.lecun_normal(), None, None, "embed", "mlp")
