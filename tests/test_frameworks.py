"""Training frameworks on the task contract (train_lib/tasks/base.py): masked LM, SimCLR,
DDPM and DCGAN train, evaluate, resume bit-exactly after kill -9 and sample; their losses
match plain-numpy references; the masking rule holds statistically; a task written
outside the repository trains through main.py. (--mode=sanity for each new config is in
tests/test_sanity.py, which runs every shipped config.)"""

import json
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import last_json, read_metrics, run_main
from test_reliability import after_progress, assert_same_arrays, run_and_kill, saved_state
from train_lib.tasks import ddpm, mlm, simclr

# Resume after kill -9 for every framework and the kinds of state a task can add: its own
# key (masks, views), state of its own (the DDPM's EMA) and parameter groups (the GAN).
FRAMEWORKS = ["shakespeare_mlm", "fashion_mnist_simclr", "fashion_mnist_ddpm",
              "fashion_mnist_dcgan"]
SAMPLERS = ("fashion_mnist_ddpm", "fashion_mnist_dcgan")


def argv(name, workdir, tfds_dir):
  return [f"--config=configs/{name}.py:runlocal", f"--workdir={workdir}",
          f"--config.data.tfds_dir={tfds_dir}", "--config.train.num_steps=20",
          "--config.train.log_every=5", "--config.train.eval_every=10",
          "--config.train.checkpoint_every=10", "--config.evals.loss.num_examples=1000",
          *(["--config.evals.probe.baselines=False", "--config.evals.probe.max_train=500"]
            if name == "fashion_mnist_simclr" else [])]


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_trains_evaluates_resumes_after_kill_and_samples(name, tmp_path, tfds_dir):
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  result = last_json(run_main(*argv(name, ref, tfds_dir)).stdout)
  assert result["step"] == 20 and np.isfinite(result["loss"]), result

  # kill -9 after step 15 (checkpoint 10 committed and its checksums written: a step killed
  # before them is not trusted, and the run would start over), rerun: the same parameters.
  sealed = os.path.join(killed, "checkpoints", "10", "checksums.json")
  code, err, _ = run_and_kill(argv(name, killed, tfds_dir),
                              lambda lines, tmp: after_progress(3)(lines, tmp) and
                              os.path.exists(sealed), killed)
  assert code == -9, err[-2000:]
  resumed = run_main(*argv(name, killed, tfds_dir))
  assert "resumed from checkpoint at step 10" in resumed.stderr
  assert last_json(resumed.stdout) == result
  assert_same_arrays(saved_state(killed, 20), saved_state(ref, 20))

  if name == "shakespeare_mlm":   # eval mode hides the same positions as training's eval
    evaluated = last_json(run_main(*argv(name, ref, tfds_dir), "--mode=eval").stdout)
    assert evaluated["loss"] == result["loss"]
  if name in SAMPLERS:
    out = last_json(run_main(*argv(name, ref, tfds_dir), "--mode=sample").stdout)
    images = np.load(os.path.join(ref, "samples.npz"))["images"]
    assert images.shape == (16, 28, 28, 1) and images.dtype == np.uint8
    assert images.std() > 0 and os.path.getsize(out["grid"]) > 0


def test_nt_xent_matches_numpy():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(12, 5)).astype(np.float32)
  loss, correct = simclr.nt_xent(jnp.asarray(z), 0.3)
  n, B = 12, 6
  u = z / np.linalg.norm(z, axis=1, keepdims=True)
  for i in range(n):
    sims = {j: u[i] @ u[j] / 0.3 for j in range(n) if j != i}
    pos = (i + B) % n
    want = -sims[pos] + np.log(sum(np.exp(v) for v in sims.values()))
    np.testing.assert_allclose(loss[i], want, rtol=1e-5)
    assert correct[i] == float(max(sims, key=sims.get) == pos)
  # A padding row is never a candidate: its own loss is irrelevant, the others' change.
  valid = jnp.ones(n).at[3].set(0).at[9].set(0)
  masked, _ = simclr.nt_xent(jnp.asarray(z), 0.3, valid)
  keep = [j for j in range(n) if j not in (3, 9, 0)]
  sims = {j: u[0] @ u[j] / 0.3 for j in keep}
  np.testing.assert_allclose(masked[0], -sims[6] + np.log(sum(np.exp(v) for v in sims.values())),
                             rtol=1e-5)
  # A batch that is mostly padding (the last eval batch): the valid rows' losses are those
  # of the valid examples alone, the padding rows' are 0, never NaN (was: inf * 0).
  valid = jnp.zeros(n).at[jnp.array([1, 4, 7, 10])].set(1)
  masked, right = simclr.nt_xent(jnp.asarray(z), 0.3, valid)
  alone, alone_right = simclr.nt_xent(jnp.asarray(z[[1, 4, 7, 10]]), 0.3)
  np.testing.assert_allclose(masked[np.array([1, 4, 7, 10])], alone, rtol=1e-5)
  np.testing.assert_array_equal(right[np.array([1, 4, 7, 10])], alone_right)
  assert np.all(np.asarray(masked)[np.asarray(valid) == 0] == 0)
  grad = jax.grad(lambda z: simclr.nt_xent(z, 0.3, valid)[0].sum())(jnp.asarray(z))
  assert np.all(np.isfinite(grad))


def test_ddpm_loss_and_schedules_match_numpy():
  T = 50
  linear = ddpm.alpha_bars("linear", T)
  betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
  np.testing.assert_allclose(linear, np.cumprod(1 - betas))
  cosine = ddpm.alpha_bars("cosine", T)
  assert np.all(np.diff(cosine) < 0) and 0 < cosine[-1] < 1e-3 and cosine[0] > 0.99

  x0 = np.random.default_rng(1).normal(size=(4, 6, 6, 1)).astype(np.float32)
  key = jax.random.PRNGKey(7)
  w = np.float32(0.3)
  eps_fn = lambda x, t: x * w + t[:, None, None, None].astype(jnp.float32) / T
  got = ddpm.diffusion_loss(eps_fn, jnp.asarray(x0), key, jnp.asarray(cosine, jnp.float32))
  k_t, k_eps = jax.random.split(key)   # the same draws, then the loss in numpy
  t = np.asarray(jax.random.randint(k_t, (4,), 0, T))
  eps = np.asarray(jax.random.normal(k_eps, x0.shape, jnp.float32))
  ab = cosine.astype(np.float32)[t][:, None, None, None]
  x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
  want = ((x_t * w + t[:, None, None, None] / T - eps) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_masking_rule_is_bert_s_statistically():
  N, V, MASK = 400_000, 256, 256
  tokens = jax.random.randint(jax.random.PRNGKey(0), (N // 200, 200), 0, V)
  inputs, selected = mlm.mask_tokens(jax.random.PRNGKey(1), tokens, 0.15, MASK, V)
  tokens, inputs, selected = map(np.asarray, (tokens, inputs, selected))
  sd = lambda p, n: 5 * np.sqrt(p * (1 - p) / n)    # 5 standard deviations
  assert abs(selected.mean() - 0.15) < sd(0.15, N)
  assert np.array_equal(inputs[~selected], tokens[~selected])   # unselected: untouched
  s_in, s_tok = inputs[selected], tokens[selected]
  n = len(s_in)
  masked = s_in == MASK
  changed = ~masked & (s_in != s_tok)
  # 10% random tokens, of which 1/V land on the original token and look kept.
  assert abs(masked.mean() - 0.8) < sd(0.8, n)
  assert abs(changed.mean() - 0.1 * (1 - 1 / V)) < sd(0.1, n)
  assert abs((s_in == s_tok).mean() - (0.1 + 0.1 / V)) < sd(0.1, n)
  counts = np.bincount(s_in[changed], minlength=V)   # random tokens: uniform over [0, V)
  expected = changed.sum() / V
  assert counts.max() < V and np.abs(counts - expected).max() < 6 * np.sqrt(expected)
  assert (inputs < V + 1).all()


USER_TASK = '''
import jax, jax.numpy as jnp, optax
from train_lib.tasks.base import MAX, MEAN, SUM, Task, mean


class SquaredError(Task):
  """Regress the one-hot label with a squared error; report the worst example."""
  metrics = {"loss": MEAN, "accuracy": MEAN, "worst": MAX, "examples": SUM}
  console = ("accuracy", "worst")

  def init_inputs(self, batch):
    return (batch["image"],), {}

  def loss(self, apply, batch, rng, *, train, group=None):
    w = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
    out = apply(batch["image"])
    err = jnp.sum((out - jax.nn.one_hot(batch["label"], out.shape[-1])) ** 2, -1)
    right = (out.argmax(-1) == batch["label"]) * w
    n = w.sum()
    return (err * w).sum() / n, {"loss": mean((err * w).sum(), n),
                                 "accuracy": mean(right.sum(), n),
                                 "worst": jnp.max(err * w), "examples": n}

  def initial_loss(self):
    return None
'''


def test_a_task_outside_the_repository_trains_through_main(tmp_path, tfds_dir):
  path = tmp_path / "user_code" / "my_task.py"
  path.parent.mkdir()
  path.write_text(textwrap.dedent(USER_TASK))
  workdir = tmp_path / "run"
  proc = run_main("--config=configs/digits_mlp.py:runlocal", f"--workdir={workdir}",
                  f"--config.data.tfds_dir={tfds_dir}", f"--config.task.name={path}:SquaredError",
                  "--config.train.num_steps=40", "--config.train.log_every=20")
  result = last_json(proc.stdout)
  assert result["examples"] == 359 == result["num_examples"]   # SUM over the eval batches
  assert 0 < result["worst"] <= 4 and result["accuracy"] > 0.5
  train = [r for r in read_metrics(str(workdir)) if r["split"] == "train" and "worst" in r]
  batch = json.load(open(workdir / "config.json"))["data"]["batch_size"]
  assert train and all(r["examples"] == batch for r in train)  # a step's sum: its batch
  assert any("| accuracy " in l and "| worst " in l for l in proc.stderr.splitlines())
  # An unknown task names the registered ones; a missing file is named.
  bad = run_main("--config=configs/digits_mlp.py:runlocal", f"--workdir={tmp_path / 'b'}",
                 "--config.task.name=classifcation", check=False)
  assert bad.returncode == 2 and "Did you mean 'classification'" in bad.stderr
  missing = run_main("--config=configs/digits_mlp.py:runlocal", f"--workdir={tmp_path / 'c'}",
                     f"--config.task.name={tmp_path}/nope.py:Task", check=False)
  assert missing.returncode == 2 and "no file" in missing.stderr


@pytest.mark.parametrize("name", ["shakespeare_mlm", "fashion_mnist_simclr"])
def test_task_keys_give_the_same_steps_on_1_and_8_devices(name, tfds_dir):
  """Masks and views come from (seed, step, micro-batch), not from the device layout;
  with 2 micro-batches each gets its own key."""
  import importlib
  from test_train_lib import run_steps
  config = importlib.import_module(f"configs.{name}").get_config("runlocal")
  config.data.tfds_dir, config.data.cache_mb = tfds_dir, 0
  config.data.eval_batch_size = 64
  config.optim.grad_accum_steps = 2
  one, _ = run_steps(config, num_steps=3, devices=jax.devices()[:1])
  eight, _ = run_steps(config, num_steps=3, devices=jax.devices()[:8])
  np.testing.assert_allclose(one, eight, rtol=2e-5)
  assert len(set(one.tolist())) == 3   # each step draws afresh


def test_bidirectional_attention_sees_ahead_and_padding_is_hidden():
  from models.transformer import Transformer
  kw = dict(vocab_size=32, num_layers=1, num_heads=2, d_model=16, max_len=8,
            attention_impl="xla", norm_impl="xla", loss_impl="xla")
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 8), 0, 32)
  later = tokens.at[:, 5].set((tokens[:, 5] + 1) % 32)
  params = Transformer(**kw).init(jax.random.PRNGKey(1), tokens)["params"]
  run = lambda causal, x, **k: Transformer(**kw, causal=causal).apply({"params": params}, x, **k)
  assert np.allclose(run(True, tokens)[:, :5], run(True, later)[:, :5])      # causal: blind
  assert not np.allclose(run(False, tokens)[:, 0], run(False, later)[:, 0])  # encoder: sees
  mask = jnp.ones((2, 8)).at[:, 5].set(0)   # position 5 is padding: no one attends to it
  others = [0, 1, 2, 3, 4, 6, 7]
  np.testing.assert_allclose(run(False, tokens, mask=mask)[:, others],
                             run(False, later, mask=mask)[:, others], rtol=1e-6, atol=1e-6)


def test_parameter_groups_get_their_own_optimizer_settings(tfds_dir):
  """optim.groups.NAME overrides optim for one group: a discriminator with learning rate 0
  stays as initialised while the generator trains; a group the task lacks is refused."""
  import ml_collections
  from configs import fashion_mnist_dcgan
  from train_lib import partitioning, setup, state as state_lib, step
  from train_lib.errors import UserError
  config = fashion_mnist_dcgan.get_config("runlocal")
  config.data.tfds_dir = tfds_dir
  config.optim.groups.discriminator = ml_collections.ConfigDict({"learning_rate": 0.0})
  s = setup.build(config, jax.devices()[:1])
  state = state_lib.create(s.model, s.tx, s.task, s.dummy_batch, config.seed, s.state_sharding)
  before = jax.device_get(state.params)
  train_step = step.compile_train_step(s.model, s.task, s.tx, s.schedule, 1, s.state_sharding,
                                       partitioning.batch_sharding(s.mesh), s.rules)
  for _ in range(2):
    state, metrics = train_step(state, s.data.next_train())
  after = jax.device_get(state.params)
  assert float(metrics["learning_rate/discriminator"]) == 0.0
  assert float(metrics["learning_rate/generator"]) == np.float32(config.optim.learning_rate)
  assert_same_arrays(after["discriminator"], before["discriminator"])
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool((a != b).any()),
                                         after["generator"], before["generator"]))
  assert all(changed)
  config.optim.groups.critic = ml_collections.ConfigDict({"learning_rate": 1e-4})
  with pytest.raises(UserError, match=r"optim.groups names \['critic'\]"):
    setup.build(config, jax.devices()[:1])
