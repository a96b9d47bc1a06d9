"""A linear probe: logistic regression on frozen features, fitted on the train split and
scored on the held-out split (the standard read-out of self-supervised learning).

    config.evals.probe = ml_collections.ConfigDict({
        "name": "linear_probe", "every": 0,
        "method": "embed",      # the model method that returns features [B, D]
        "baselines": True,      # also probe the raw pixels and the encoder at initialisation
        "max_train": 0,         # train examples used; 0 = all
        "steps": 500, "l2": 1e-4})

Reports accuracy and loss on the held-out split (and train_accuracy); with baselines,
pixels_accuracy and init_accuracy in the same units. The fit is full-batch L-BFGS on
standardised features, the same for every feature set, so the numbers compare.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train_lib import state as state_lib
from train_lib.partitioning import to_host
from train_lib.errors import UserError
from train_lib.evaluators import Evaluator, register


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_logistic(x_NxD, y_N, num_classes: int, l2: float, steps: int):
  """(W [D, K], b [K]) minimising mean cross-entropy + l2 * |W|^2, by L-BFGS."""
  D = x_NxD.shape[1]
  params = (jnp.zeros((D, num_classes)), jnp.zeros((num_classes,)))

  def loss(p):
    w, b = p
    logits = x_NxD @ w + b
    return optax.softmax_cross_entropy_with_integer_labels(logits, y_N).mean() + \
        l2 * jnp.sum(w * w)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry, _):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(p, updates), state), value
  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
  return params


def probe(train, test, num_classes: int, l2: float, steps: int) -> dict:
  """Fits on train = (features, labels), scores on test; features standardised by train's."""
  (x, y), (xt, yt) = train, test
  mu, sd = x.mean(0), x.std(0) + 1e-6
  x, xt = (x - mu) / sd, (xt - mu) / sd
  w, b = fit_logistic(jnp.asarray(x, jnp.float32), jnp.asarray(y), num_classes, l2, steps)
  logits_t = np.asarray(jnp.asarray(xt, jnp.float32) @ w + b)
  logits = np.asarray(jnp.asarray(x, jnp.float32) @ w + b)
  nll = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits_t), jnp.asarray(yt))
  return {"accuracy": float((logits_t.argmax(-1) == yt).mean()),
          "loss": float(np.asarray(nll).mean()),
          "train_accuracy": float((logits.argmax(-1) == y).mean())}


@register("linear_probe")
class LinearProbe(Evaluator):
  config_fields = ("method", "input", "label", "max_train", "steps", "l2", "baselines")   # beside name and every
  def __init__(self, config, setup, workdir):
    super().__init__(config, setup, workdir)
    s = setup
    if not s.data.num_classes:
      raise UserError(f"evals: linear_probe needs labelled data; {s.data.config.name!r} has "
                      "no classes")
    self.method = config.get("method", "embed")
    self.input_key, self.label_key = config.get("input", "image"), config.get("label", "label")
    if self.method != "pixels" and not hasattr(s.model, self.method):
      raise UserError(f"evals: linear_probe.method={self.method!r} is not a method of model "
                      f"{type(s.model).__name__}; name the one that returns features")
    self.max_train, self.steps = config.get("max_train", 0), config.get("steps", 500)
    self.l2, self.baselines = config.get("l2", 1e-4), config.get("baselines", False)
    self._baseline_results = None
    model, method = s.model, self.method

    def features(params, model_state, x):
      if method == "pixels":
        return x.reshape(x.shape[0], -1)
      out = model.apply({"params": params, **model_state}, x, train=False, method=method)
      return out.reshape(out.shape[0], -1).astype(jnp.float32)
    self._features = jax.jit(features)

  def _split(self, params, model_state, split: str, features=None):
    features = features or self._features
    xs, ys = [], []
    limit = self.max_train if split == "train" else 0
    for batch in self.setup.data.eval_batches(split, limit):
      f = to_host(features(params, model_state, batch[self.input_key]))
      keep = to_host(batch["mask"]) > 0 if "mask" in batch else slice(None)
      xs.append(f[keep])
      ys.append(to_host(batch[self.label_key])[keep])
    return np.concatenate(xs), np.concatenate(ys)

  def _probe(self, params, model_state, features=None) -> dict:
    train = self._split(params, model_state, "train", features)
    test = self._split(params, model_state, "eval", features)
    return probe(train, test, self.setup.data.num_classes, self.l2, self.steps)

  def run(self, state) -> dict:
    s = self.setup
    out = self._probe(s.task.eval_params(state), state.model_state)
    if self.baselines:
      if self._baseline_results is None:  # they do not change during a run
        init = state_lib.create(s.model, s.tx, s.task, s.dummy_batch, s.seed,
                                s.state_sharding)
        pixels = jax.jit(lambda p, m, x: x.reshape(x.shape[0], -1).astype(jnp.float32))
        self._baseline_results = {
            "pixels_accuracy": self._probe(init.params, init.model_state, pixels)["accuracy"],
            "init_accuracy": self._probe(s.task.eval_params(init), init.model_state)["accuracy"]}
      out.update(self._baseline_results)
    return out
