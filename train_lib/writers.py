"""Where metrics go: metrics.jsonl, TensorBoard event files, and the console.

    writer = Writer(workdir)
    writer.write(step, "train", {"loss": 0.3, "steps_per_sec": 90.0})
    writer.close()
    print(table(["name", "loss"], [["a", 0.3]]))   # aligned columns, or markdown=True
    curves = read_curves(workdir, "loss")   # {"train": {step: loss}, "test": {...}}
    lines = read_lines(workdir)             # {"train": {step: {metric: value}}, ...}

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
    path = os.path.join(workdir, "metrics.jsonl")
    drop_torn_tail(path)
    self.jsonl = open(path, "a")
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


def write_atomic(path: str, text: str):
  """The whole text or nothing: a temporary file beside `path`, fsync, rename. A crash
  leaves the old file or the new one, never a torn one."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
  try:
    os.fsync(folder)
  finally:
    os.close(folder)


def write_json(path: str, value, **kwargs):
  write_atomic(path, json.dumps(value, **kwargs) + "\n")


def read_json(path: str, default=None):
  """A JSON file of the workdir, or `default` (with one warning line) where it is missing,
  empty or torn: no log of the workdir can stop a run."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return default
  except (OSError, ValueError) as e:
    console(f"warning: {path} is unreadable ({type(e).__name__}: a crash mid-write?); "
            "going on without it")
    return default


def drop_torn_tail(path: str):
  """Cuts a last line that a crash left without its newline (with one warning line), so
  that what is appended next starts a line of its own."""
  if not os.path.exists(path) or jax.process_index() != 0:
    return
  with open(path, "rb+") as f:
    data = f.read()
    if not data or data.endswith(b"\n"):
      return
    keep = data.rfind(b"\n") + 1
    f.truncate(keep)
  console(f"warning: {path} ended in a torn line ({len(data) - keep} bytes, from a crash); "
          "dropped it")


def read_lines(workdir: str) -> dict:
  """{split: {step: {metric: value}}} of metrics.jsonl's training lines (not --mode=eval
  lines); where a resumed run logged a step again, the last line wins."""
  lines = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return lines
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:  # a torn last line; the writer drops it before it appends
        continue
      if record.get("mode") is None:
        lines.setdefault(record["split"], {}).setdefault(record["step"], {}).update(
            {k: v for k, v in record.items() if k not in ("step", "split")})
  return lines


def read_curves(workdir: str, key: str = "loss") -> dict:
  """{split: {step: value}} of `key` in metrics.jsonl's training lines."""
  return {split: {step: record[key] for step, record in steps.items() if key in record}
          for split, steps in read_lines(workdir).items()}


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
