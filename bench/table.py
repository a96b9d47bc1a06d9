"""A benchmark's closing table (train_lib.writers.table) and JSON record.

    print_table([("variant", -28, lambda r: r["variant"]), ("tokens/s", 11,
                 lambda r: f"{r['tokens_per_sec']:,.0f}")], rows, label_columns=1)
    write_json(path, peak, device_name, rows)
    rows.append({"error": error(exc)})      # a failed row: the exception's first line
    rows.append({"error": child_error(proc.stderr)})   # a failed child process's exception

A column is (header, width, cell): a negative width aligns left (columns size themselves
to their cells). A row with an "error" shows its first label_columns cells, then the error.
"""

import json
import re

from train_lib import writers


def error(exc, limit=120) -> str:
  return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:limit]}"


def child_error(stderr: str, limit=300) -> str:
  """A failed child process's error: main.py's closing "error: ..." line, else the last line
  of its stderr that names an exception (JAX appends a note on filtered frames after it)."""
  lines = [line.strip() for line in (stderr or "").strip().splitlines()] or ["failed"]
  if lines[-1].startswith("error:"):   # main.py's one-line exit
    return lines[-1][:limit]
  named = [line for line in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Exit)\b", line)]
  return (named or lines)[-1][:limit]


def memory_gb(r) -> str:
  return f"{r['memory_gb']:.1f}" if r["memory_gb"] is not None else "-"


def print_table(columns, rows, label_columns=1):
  cells = [[cell(r) for _, _, cell in (columns[:label_columns] if "error" in r else columns)]
           for r in rows]
  right = [i for i, (_, width, _) in enumerate(columns) if width > 0]
  text = writers.table([header for header, _, _ in columns], cells, right=right)
  header, *lines = text.splitlines()
  print(header)
  for line, r in zip(lines, rows):
    print(line + (f"  {r['error']}" if "error" in r else ""))


def write_json(path, peak_tflops, device, rows, **extra):
  if path:
    with open(path, "w") as f:
      json.dump({"peak_tflops": peak_tflops, "device": device, **extra, "rows": rows}, f,
                indent=1)
