"""A benchmark's closing table and JSON record (no framework imports: the PyTorch peer uses it).

    print_table([("variant", -28, lambda r: r["variant"]), ("tokens/s", 11,
                 lambda r: f"{r['tokens_per_sec']:,.0f}")], rows, label_columns=1)
    write_json(path, peak, device_name, rows)
    rows.append({"error": error(exc)})      # a failed row: the exception's first line

A column is (header, width, cell): a negative width aligns left. A row with an "error"
prints its first label_columns cells, then the error.
"""

import json


def _cell(text, width):
  return f"{text:<{-width}}" if width < 0 else f"{text:>{width}}"


def error(exc, limit=120) -> str:
  return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:limit]}"


def memory_gb(r) -> str:
  return f"{r['memory_gb']:.1f}" if r["memory_gb"] is not None else "-"


def print_table(columns, rows, label_columns=1):
  print("".join(_cell(header, width) for header, width, _ in columns))
  for r in rows:
    shown = columns[:label_columns] if "error" in r else columns
    line = "".join(_cell(cell(r), width) for _, width, cell in shown)
    print(line + (f"  {r['error']}" if "error" in r else ""))


def write_json(path, peak_tflops, device, rows, **extra):
  if path:
    with open(path, "w") as f:
      json.dump({"peak_tflops": peak_tflops, "device": device, **extra, "rows": rows}, f,
                indent=1)
