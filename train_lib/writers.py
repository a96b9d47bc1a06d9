"""Where metrics go: metrics.jsonl, TensorBoard event files, and the console.

    writer = Writer(workdir)
    writer.write(step, "train", {"loss": 0.3, "steps_per_sec": 90.0})
    writer.close()
    print(table(["name", "loss"], [["a", 0.3]]))   # aligned columns, or markdown=True
    curves = read_curves(workdir, "loss")   # {"train": {step: loss}, "test": {...}}

Only process 0 writes; on other processes every call is a no-op.
"""

import json
import os
import sys

import jax


class Writer:

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    from tensorboardX import SummaryWriter
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def write(self, step: int, split: str, metrics: dict, **extra):
    if not self.active:
      return
    record = {"step": int(step), "split": split, **extra,
              **{k: _plain(v) for k, v in metrics.items()}}
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    for key, value in metrics.items():
      self.tb.add_scalar(f"{split}/{key}", _plain(value), int(step))

  def close(self):
    if self.active:
      self.jsonl.close()
      self.tb.close()


def _plain(value):
  value = float(value)
  return int(value) if value.is_integer() and abs(value) < 2**53 else value


def read_curves(workdir: str, key: str = "loss") -> dict:
  """{split: {step: value}} of `key` in metrics.jsonl, training runs only (not --mode=eval
  lines); where a resumed run logged a step again, the last value wins."""
  curves = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return curves
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      if key in record and record.get("mode") is None:
        curves.setdefault(record["split"], {})[record["step"]] = record[key]
  return curves


def console(line: str):
  """One progress line on stderr (stdout is kept for results)."""
  if jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)


def table(header, rows, markdown: bool = False, right=()) -> str:
  """Rows of cells as aligned columns (those whose index is in `right` align right), or as
  a Markdown table. Every table Whetstone prints goes through here."""
  cells = [[str(c) for c in row] for row in [header, *rows]]
  if markdown:
    line = lambda row: "| " + " | ".join(row) + " |"
    return "\n".join([line(cells[0]), line(["---"] * len(header)), *map(line, cells[1:])])
  widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(len(header))]
  line = lambda row: "  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip()
  return "\n".join(map(line, cells))


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
