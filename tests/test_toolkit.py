"""The researcher's toolkit: replay from config.json, the capsule, step instruments,
diagnosis of loss curves, unread config fields, and --mode=ablate (the shipped ablation
runs end to end in its runlocal form)."""

import glob
import importlib
import json
import re
import os

import pytest

from helpers import REPO, last_json, read_metrics, run_main
from train_lib import config_io
from train_lib.errors import Diverged
from train_lib.tools import capsule


def train_losses(workdir):
  return [(r["step"], r["loss"]) for r in read_metrics(workdir)
          if r["split"] == "train" and "loss" in r]


TYPO_CONFIG = """
from configs import digits_mlp


def get_config(arg=None):
  config = digits_mlp.get_config(arg)
  config.data.holdout_fraction = 0.2   # declared, but only text sources read it
  return config
"""


def unread_warnings(stderr):
  return [l for l in stderr.splitlines() if "is set but nothing" in l]


def test_a_typo_in_a_config_file_exits_2_as_on_the_command_line(tmp_path):
  (tmp_path / "typo.py").write_text(TYPO_CONFIG.replace("data.holdout_fraction", "optim.lerning_rate"))
  proc = run_main(f"--config={tmp_path}/typo.py:runlocal", f"--workdir={tmp_path}/w",
                  check=False)
  assert proc.returncode == 2 and not os.path.exists(tmp_path / "w"), proc.stderr
  assert proc.stderr.strip().splitlines() == [
      "error: unknown config key optim.lerning_rate (did you mean 'learning_rate'?): not "
      "declared in configs/base.py nor by the plug-in its section names; fix the config file"]
  for key, hint in (("model.hiden", "hidden"), ("evals.loss.num_exmples", "num_examples"),
                    ("train.lgo_every", "log_every")):
    (tmp_path / "typo2.py").write_text(TYPO_CONFIG.replace("data.holdout_fraction", key))
    proc = run_main(f"--config={tmp_path}/typo2.py", f"--workdir={tmp_path}/w", check=False)
    assert proc.returncode == 2 and f"{key} (did you mean {hint!r}?)" in proc.stderr


def test_replay_from_config_json_gives_the_same_numbers(tmp_path, tfds_dir):
  """Also: a field that no code reads (one an option leaves unused) is reported at start-up,
  once, and the shipped config's own mode-specific fields are not."""
  first, again = str(tmp_path / "first"), str(tmp_path / "again")
  (tmp_path / "typo.py").write_text(TYPO_CONFIG)
  proc = run_main(f"--config={tmp_path}/typo.py:runlocal", f"--workdir={first}",
                  f"--config.data.tfds_dir={tfds_dir}", "--config.train.num_steps=12",
                  "--config.train.log_every=3", "--config.seed=3")
  warnings = unread_warnings(proc.stderr)
  assert len(warnings) == 1 and "data.holdout_fraction=0.2" in warnings[0], proc.stderr
  assert proc.stderr.index(warnings[0]) < proc.stderr.index("step 3/12")  # at start-up
  replay = run_main(f"--config={first}/config.json", f"--workdir={again}")
  assert unread_warnings(replay.stderr) == warnings
  assert last_json(replay.stdout) == last_json(proc.stdout)
  assert len(train_losses(again)) == 5 and train_losses(again) == train_losses(first)  # 0: init
  assert json.load(open(f"{again}/config.json")) == json.load(open(f"{first}/config.json"))
  record = json.load(open(f"{again}/capsule.json"))
  assert record["command"][1] == f"--config={first}/config.json"
  assert record["data_seed"] == 3 and "git_diff" in record and "xla_flags" in record
  assert "jax_enable_x64" in record["jax_flags"]
  assert record["devices"]["topology"] == [
      {"id": 0, "kind": "cpu", "platform": "cpu", "process_index": 0}]


@pytest.mark.parametrize("name", ["default", "shakespeare_char", "fashion_mnist_resnet"])
def test_read_config_restores_the_types_of_the_written_config(tmp_path, name):
  import ml_collections
  config = importlib.import_module(f"configs.{name}").get_config()
  path = tmp_path / "config.json"
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  back = config_io.from_json(str(path))
  flat = lambda c: {k: (v, type(v)) for k, v in _flatten(c)}
  assert flat(back) == flat(config)
  assert isinstance(back.model, ml_collections.ConfigDict)


def _flatten(config, prefix=""):
  for key, value in config.items():
    if hasattr(value, "items"):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def test_capsule_caps_the_diff_with_a_note(monkeypatch):
  monkeypatch.setattr(capsule, "DIFF_LIMIT", 10)
  monkeypatch.setattr(capsule, "_git", lambda *a: "x" * 25 if a[0] == "diff" else "?? new.py")
  out = capsule._diff()
  assert out["git_diff"] == "x" * 10 and "25" in out["git_diff_note"]
  assert out["git_untracked"] == ["new.py"]


def test_unread_fields_are_those_set_and_never_read(capsys):
  from configs import shakespeare_char
  from train_lib import config_reads
  config = shakespeare_char.get_config()
  config.optim.momentum = 0.5     # set, but adamw never reads it
  config.train.lgo_every = 10     # a typo
  config.lock()
  tracked = config_reads.track(config)
  tracked.to_json_best_effort()   # serializing the whole config reads no field
  str(tracked)
  assert tracked.optim.learning_rate == 1e-3 and dict(tracked.model.items())
  tracked.get("seed")
  assert config_reads.track(tracked) is tracked
  unread = dict(config_reads.unread(tracked, "train"))
  assert unread["optim.momentum"] == 0.5 and unread["train.lgo_every"] == 10
  assert "optim.learning_rate" not in unread and "seed" not in unread
  assert not any(k.startswith("model.") for k in unread)      # items() reads every field
  assert "optim.nesterov" not in unread                        # a default: not set by anyone
  assert "sample.max_new_tokens" not in unread                 # train leaves sample.* unread
  assert "sample.max_new_tokens" in dict(config_reads.unread(tracked, "ablate"))
  assert config_reads.report(tracked, "train") and config_reads.report(tracked, "train") == []
  err = capsys.readouterr().err
  assert err.count("warning: config field train.lgo_every=10 is set but nothing") == 1
  assert config_reads.unread(config, "train") == []  # an untracked config reports nothing
  assert type(config).__name__ == "ConfigDict" and config.is_locked


def test_what_an_edited_copy_reads_counts_as_read():
  """Per-group optimizers and the compile search build from edited copies of the config."""
  import ml_collections
  from configs import fashion_mnist_dcgan
  from train_lib import config_reads, optim
  config = fashion_mnist_dcgan.get_config("runlocal")
  config.optim.b2, config.optim.nesterov = 0.9, True   # adamw reads b2, never nesterov
  config.optim.groups.discriminator = ml_collections.ConfigDict({"learning_rate": 4e-4})
  config.train.lgo_every = 3             # read through a copy only (below)
  tracked = config_reads.track(config)
  optim.build_groups(tracked.optim, ("discriminator", "generator"), 100)
  unread = dict(config_reads.unread(tracked, "train"))
  assert "optim.b2" not in unread and unread["optim.nesterov"] is True
  copied = config_reads.copy(tracked)
  copied.seed = 7                        # an edit of the copy leaves the original alone
  assert "train.lgo_every" in dict(config_reads.unread(tracked, "train"))
  assert tracked.seed != 7 and copied.train.lgo_every == 3
  assert "train.lgo_every" not in dict(config_reads.unread(tracked, "train"))
  both = config_reads.track(fashion_mnist_dcgan.get_config("runlocal"))
  both.optim.learning_rate = 3e-3       # set, then overridden in every group's copy: unread
  both.optim.groups.discriminator = ml_collections.ConfigDict({"learning_rate": 4e-4})
  both.optim.groups.generator = ml_collections.ConfigDict({"learning_rate": 2e-4})
  optim.build_groups(both.optim, ("discriminator", "generator"), 100)
  assert dict(config_reads.unread(both, "train"))["optim.learning_rate"] == 3e-3


def curve(values, every=10):
  return [(every * (i + 1), float(v)) for i, v in enumerate(values)]


def healthy(n=30, start=2.3, floor=0.2, noise=0.01):
  import numpy as np
  rng = np.random.default_rng(0)
  return [floor + (start - floor) * np.exp(-i / 6) + noise * rng.normal() for i in range(n)]


@pytest.mark.parametrize("kind, train, evals", [
    ("non_finite", [2.3, 1.9, float("nan")], []),
    ("divergence", [2.3, 1.2, 0.6, 0.5, 1.6, 1.9], []),
    ("divergence", [2.3, 1e9, 1e12], []),
    ("plateau", [2.31, 2.30, 2.31, 2.29, 2.30], []),
    ("oscillation", [2.3, 1.5, 1.0, 1.4, 0.8, 1.3, 0.7, 1.3, 0.8, 1.2, 0.7], []),
    ("spikes", healthy()[:15] + [1.5] + healthy()[16:], []),
    ("widening_gap", [2.0, 1.5, 1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08],
     [1.6, 1.15, 0.95, 0.9, 0.92, 0.97]),
])
def test_diagnose_finds_each_pattern(kind, train, evals):
  from train_lib.tools import diagnosis
  found = diagnosis.diagnose(curve(train), curve(evals, every=20)[:len(evals)],
                             num_steps=10 * len(train), initial_loss=2.303)
  assert [f["kind"] for f in found] == [kind], found
  line = diagnosis.line(found[0])
  assert "\n" not in line and "Likely:" in line and "Try:" in line


def test_diagnose_stays_quiet_on_a_healthy_run():
  from train_lib.tools import diagnosis
  train = healthy()
  evals = [v + 0.05 for v in train[1::2]]   # held-out a little above train, falling with it
  assert diagnosis.diagnose(curve(train), curve(evals, every=20), 300, 2.303) == []
  # During training, a flat start is not called a plateau before a quarter of the steps.
  assert diagnosis.diagnose(curve([2.3] * 5), [], 1000, 2.303, final=False) == []
  assert diagnosis.diagnose(curve([2.3] * 5), [], 1000, 2.303, final=True)


def test_a_run_that_cannot_learn_and_one_that_blows_up_are_diagnosed(tmp_path, tfds_dir,
                                                                     capsys):
  from train_lib import modes
  from configs import digits_mlp
  config = digits_mlp.get_config("runlocal")
  config.data.tfds_dir = tfds_dir
  config.optim.learning_rate = 0.0
  config.optim.warmup_steps = 0
  config.train.num_steps, config.train.log_every, config.train.eval_every = 24, 3, 12
  modes.run("train", config, str(tmp_path / "zero"))
  err = capsys.readouterr().err
  plateau = [l for l in err.splitlines() if l.startswith("diagnosis: plateau")]
  assert len(plateau) == 1 and "learning rate" in plateau[0], err
  assert err.index(plateau[0]) < err.index("step 24/24")     # found during the run
  saved = json.load(open(tmp_path / "zero" / "diagnosis.json"))
  assert [f["kind"] for f in saved["findings"]] == ["plateau"]
  assert os.path.exists(tmp_path / "zero" / "plots" / "loss.png")
  from train_lib.tools import plots
  ax = plots.loss_figure(str(tmp_path / "zero")).axes[0]
  assert ax.get_yscale() == "log" and ax.get_xlim()[0] == 0
  lines = {l.get_label(): l for l in ax.lines}
  assert list(lines["initial loss"].get_xdata()) == [0]   # the loss at init, measured
  assert lines["train loss"].get_xdata()[0] == 0
  records = [r for r in read_metrics(str(tmp_path / "zero")) if "grad_rms" in r]
  assert records and all(r["update_rms"] == 0.0 and r["grad_rms/Dense_0"] > 0 for r in records)

  config.optim.name, config.optim.learning_rate = "sgd", 1e6
  with pytest.raises(Diverged):
    modes.run("train", config, str(tmp_path / "nan"))
  assert "diagnosis: non_finite at step 3" in capsys.readouterr().err
  saved = json.load(open(tmp_path / "nan" / "diagnosis.json"))
  assert [f["kind"] for f in saved["findings"]] == ["non_finite"]


def digits_ablation(**changes):
  """A small ablation on the digits MLP: two seeds, 20 steps, checked at step 10."""
  import ml_collections
  abl = ml_collections.ConfigDict()
  abl.baseline = ml_collections.ConfigDict()
  abl.baseline.config = "configs/digits_mlp.py:runlocal"
  abl.baseline.overrides = (("train.num_steps", 40), ("train.log_every", 5),
                            ("train.eval_every", 10), ("train.checkpoint_every", 0))
  abl.variants = (("no_learning", "optim.learning_rate", 0.0),
                  ("weight_decay", "optim.weight_decay", 1e-4))
  abl.seeds = (0, 1)
  abl.proxy = 0.5
  abl.metric = "loss"
  abl.higher_is_better = False
  abl.early_stop = ml_collections.ConfigDict()
  abl.early_stop.at = 0.5
  abl.early_stop.sigmas = 2.0
  abl.early_stop.tolerance = 0.05
  abl.update(changes)
  return abl


@pytest.mark.parametrize("change, message", [
    ({"variants": (("typo", "optim.lerning_rate", 0.1),)},
     "variant 'typo': no config field optim.lerning_rate; did you mean 'learning_rate'?"),
    ({"variants": (("same", "optim.learning_rate", 1e-3),)}, "the baseline's value"),
    ({"variants": (("bad_type", "train.num_steps", "many"),)}, "train.num_steps='many'"),
    ({"variants": (("a", "seed", 1), ("a", "seed", 2))}, "unique"),
    ({"proxy": 0.0}, "proxy=0.0"),
    ({"seeds": ()}, "seeds is empty"),
    ({"baseline": {"config": "configs/nothing.py", "overrides": ()}}, "configs/nothing.py"),
])
def test_ablation_config_errors_name_the_problem(tfds_dir, change, message):
  from train_lib.tools import ablate
  from train_lib.errors import UserError
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace("?", r"\?")):
    ablate.Plan(digits_ablation(**change))


def test_ablation_plan_scales_the_baseline_and_finds_the_check_step(tfds_dir):
  from train_lib.tools import ablate
  from train_lib.errors import UserError
  plan = ablate.Plan(digits_ablation())
  base = plan.configs["baseline"]
  assert plan.steps == base.train.num_steps == 20 and base.optim.warmup_steps == 2  # half
  assert plan.check_step == 10 and plan.split == "test"
  assert plan.configs["weight_decay"].optim.weight_decay == 1e-4
  assert plan.changes["weight_decay"] == ("optim.weight_decay", 1e-4)
  assert plan.band_limit([1.0, 1.0]) == pytest.approx(1.05)     # tolerance x mean
  assert plan.band_limit([1.0, 1.2]) == pytest.approx(1.1 + 2 * 0.2 / 2**0.5)
  with pytest.raises(UserError, match="last step"):
    ablate.Plan(digits_ablation(early_stop={"at": 0.6, "sigmas": 2.0, "tolerance": 0.0}))


def test_ablation_stops_a_worse_variant_and_rerun_skips_finished_runs(tmp_path, tfds_dir,
                                                                       capfd):
  from train_lib import modes
  abl = digits_ablation()
  abl.baseline.overrides += (("data.tfds_dir", tfds_dir),)
  summary = modes.run("ablate", abl, str(tmp_path))
  rows = {r["variant"]: r for r in summary["rows"]}
  assert list(rows) == ["baseline", "no_learning", "weight_decay"]
  assert rows["no_learning"]["stopped"] and not rows["weight_decay"]["stopped"]
  saved = json.load(open(tmp_path / "ablation.json"))
  runs = saved["runs"]
  assert [r["seed"] for r in runs["no_learning"]] == [0]   # seed 1 skipped once stopped
  assert runs["no_learning"][0]["step"] == 10 and runs["no_learning"][0]["status"] == "stopped"
  assert [r["step"] for r in runs["weight_decay"]] == [20, 20]
  base = [r["value"] for r in runs["baseline"]]
  assert rows["baseline"]["mean"] == pytest.approx(sum(base) / 2)
  assert rows["weight_decay"]["delta"] == pytest.approx(
      rows["weight_decay"]["mean"] - rows["baseline"]["mean"])
  stopped_row = next(r for r in saved["rows"] if r["variant"] == "no_learning")
  assert stopped_row["step"] == 10 and stopped_row["delta"] > 0   # compared at the check step
  table = open(tmp_path / "ablation.md").read()
  assert "| no_learning | `optim.learning_rate=0.0` | 10 |" in table and "yes: loss" in table
  assert os.path.exists(tmp_path / "plots" / "ablation.png")
  first = capfd.readouterr().err
  assert "compiled train step" in first and "is set but nothing" not in first

  again = modes.run("ablate", abl, str(tmp_path))
  assert again == summary
  rerun = capfd.readouterr().err
  assert "compiled train step" not in rerun   # every run was finished, and says so
  assert re.search(r"ablate: \[1/6\] baseline seed 0 \(.*\): done already \(step 20\), skipped",
                   rerun), rerun
  assert "no_learning seed 0" in rerun and "done already (stopped early at step 10)" in rerun


def test_shipped_ablation_runs_end_to_end_in_its_runlocal_form(tmp_path, tfds_dir):
  module = importlib.import_module("configs.ablations.shakespeare_arch")
  assert "python main.py --mode=ablate --config=configs/ablations/" in module.__doc__
  one_seed = "--config.seeds=(0,)"           # the runs of a second seed add time, not checks
  proc = run_main("--mode=ablate", "--config=configs/ablations/shakespeare_arch.py:runlocal",
                  f"--workdir={tmp_path}", one_seed)
  summary = last_json(proc.stdout)
  names = ["baseline", "sinusoidal", "rope", "alibi", "no_position", "relu", "sq_relu",
           "swiglu"]
  assert [r["variant"] for r in summary["rows"]] == names
  assert all(3.0 < r["mean"] < 5.6 for r in summary["rows"]), summary   # chance: ln 256 = 5.55
  table = open(tmp_path / "ablation.md").read().splitlines()
  assert len([l for l in table if l.startswith("| ")]) == 2 + len(names)  # header, rule
  assert os.path.exists(tmp_path / "plots" / "ablation.png")
  for name in names:
    assert read_metrics(str(tmp_path / name / "seed_0"))
  assert "is set but nothing" not in proc.stderr     # no unread field in shipped configs
  again = run_main("--mode=ablate", "--config=configs/ablations/shakespeare_arch.py:runlocal",
                   f"--workdir={tmp_path}", one_seed)
  assert last_json(again.stdout) == summary and "compiled train step" not in again.stderr


@pytest.mark.parametrize("path", glob.glob(os.path.join(REPO, "configs", "ablations", "*.py")))
def test_ablation_configs_are_configs(path):
  """Ablation configs import only configs and ml_collections, and each variant applies."""
  import ast
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
      assert all(n.split(".")[0] in ("ml_collections", "configs") for n in names), path
  if path.endswith("__init__.py"):
    return
  from train_lib.tools import ablate
  name = os.path.basename(path)[:-3]
  for arg in (None, "runlocal"):
    abl = importlib.import_module(f"configs.ablations.{name}").get_config(arg)
    plan = ablate.Plan(abl)
    assert len(plan.configs) > 1 and (plan.check_step or not abl.early_stop.at)


def test_bench_table_aligns_columns_and_reports_errors(capsys, tmp_path):
  from bench import table
  rows = [{"name": "a", "mb": 64, "tps": 1234.5}, {"name": "bb", "mb": 128, "error": "OOM"}]
  columns = [("name", -6, lambda r: r["name"]), ("mb", 4, lambda r: r["mb"]),
             ("tokens/s", 10, lambda r: f"{r['tps']:,.0f}")]
  table.print_table(columns, rows)
  table.print_table(columns, rows, label_columns=2)
  assert capsys.readouterr().out.splitlines() == [
      "name  mb  tokens/s", "a     64     1,234", "bb  OOM",      # columns fit their cells
      "name   mb  tokens/s", "a      64     1,234", "bb    128  OOM"]
  table.write_json(str(tmp_path / "r.json"), 800.0, "GPU", rows, torch="2.11")
  with open(tmp_path / "r.json") as f:
    assert json.load(f) == {"peak_tflops": 800.0, "device": "GPU", "torch": "2.11",
                            "rows": rows}
  table.write_json("", 800.0, "GPU", rows)   # no path: nothing written, no error
  assert table.error(ValueError("first line\nsecond")) == "ValueError: first line"
  assert table.error(RuntimeError()) == "RuntimeError: "
  assert table.error(ValueError("x" * 200), limit=5) == "ValueError: xxxxx"
  assert [table.memory_gb({"memory_gb": m}) for m in (None, 32.66)] == ["-", "32.7"]


def test_ablation_variant_can_be_another_config_on_the_same_data(tfds_dir):
  from train_lib.tools import ablate
  from train_lib.errors import UserError
  plan = ablate.Plan(digits_ablation(variants=(("cnn", "config", "configs/default.py:runlocal"),)))
  cnn, base = plan.configs["cnn"], plan.configs["baseline"]
  assert cnn.model.name == "cnn" and base.model.name == "mlp"
  assert cnn.train.num_steps == base.train.num_steps == 20    # the baseline's steps, not its own
  assert cnn.train.eval_every == 10                           # baseline.overrides apply too
  assert plan.changes["cnn"] == ("config", "configs/default.py:runlocal")
  with pytest.raises(UserError, match=r"reads other data than the baseline \(.*data.name"):
    ablate.Plan(digits_ablation(variants=(("lm", "config",
                                           "configs/shakespeare_char.py:runlocal"),)))


@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_families_ablation_plans_every_family_on_the_baseline_data(arg):
  """configs/ablations/shakespeare_families.py: Transformer, LSTM, GRU, SSM and MoE, each its
  own config, at the baseline's steps on exactly its data (the plan refuses otherwise)."""
  from configs.ablations import shakespeare_families
  from train_lib.tools import ablate
  plan = ablate.Plan(shakespeare_families.get_config(arg))
  models = {name: c.model.name for name, c in plan.configs.items()}
  assert models == {"baseline": "transformer", "lstm": "rnn", "gru": "rnn", "ssm": "ssm",
                    "moe": "moe"}
  assert plan.configs["gru"].model.cell == "gru"
  base = plan.configs["baseline"]
  for config in plan.configs.values():
    assert config.data == base.data and config.train.num_steps == base.train.num_steps


USER_MODEL = """
import flax.linen as nn


class TinyMLP(nn.Module):
  num_classes: int
  width: int = 32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)
"""


def test_a_user_model_loads_by_path_and_its_replay_survives_an_edit(tmp_path, tfds_dir):
  """A model file outside the repo on a shipped config: it gets only the fields it declares
  (the CNN's are reported), its source is copied into the workdir with its sha256, and a
  replay after the file was edited (here: broken) runs the copy and gives the same numbers."""
  code = tmp_path / "lab" / "mymodels.py"
  code.parent.mkdir()
  code.write_text(USER_MODEL)
  first, again = str(tmp_path / "first"), str(tmp_path / "again")
  args = ["--config.train.num_steps=6", "--config.train.log_every=3",
          f"--config.data.tfds_dir={tfds_dir}"]
  proc = run_main("--config=configs/default.py:runlocal", f"--workdir={first}",
                  f"--config.model.name={code}:TinyMLP", *args)
  assert ("not passed (fields it does not declare): model.dense, model.features"
          in proc.stderr), proc.stderr
  record = json.load(open(f"{first}/capsule.json"))
  [entry] = record["user_code"]
  import hashlib
  assert entry["name"] == str(code) and entry["copy"] == "code/mymodels.py"
  assert entry["sha256"] == hashlib.sha256(USER_MODEL.encode()).hexdigest()
  assert open(f"{first}/code/mymodels.py").read() == USER_MODEL
  code.write_text("raise RuntimeError('edited after the run')\n")
  replay = run_main(f"--config={first}/config.json", f"--workdir={again}")
  assert last_json(replay.stdout) == last_json(proc.stdout)
  assert train_losses(again) == train_losses(first)
  with open(f"{first}/code/mymodels.py", "a") as f:
    f.write("# tampered\n")
  tampered = run_main(f"--config={first}/config.json", f"--workdir={tmp_path}/t", check=False)
  assert tampered.returncode == 2 and "does not match the sha256" in tampered.stderr
