"""Where a profiled step's device time goes, from a perfetto trace.

    python bench/train_step.py --profile=/tmp/prof ...      # writes the traces
    python bench/profile_summary.py /tmp/prof/NAME_mb32 --top=40

Sums the duration of every device-side event (processes named /device:...) by name,
over all traced steps, and prints the largest with their share of the device time and
the HLO text's fusion kind where step.hlo.txt is present next to the trace.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re


def device_events(trace_dir):
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                          recursive=True))[-1]
  with gzip.open(path) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  procs = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  return [(e, threads.get((e["pid"], e.get("tid")), "")) for e in events
          if e.get("ph") == "X" and "/device:" in procs.get(e["pid"], "")]


def hlo_kinds(trace_dir):
  """fusion name -> a short description (kind and the first ops) from the HLO text."""
  path = os.path.join(trace_dir, "step.hlo.txt")
  if not os.path.exists(path):
    return {}
  kinds = {}
  for line in open(path):
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (fusion|custom-call|[\w-]+)\(.*?"
                 r"(?:kind=(\w+))?(?:, calls=%?([\w.\-]+))?", line)
    if m:
      name, shape, op, kind, _ = m.groups()
      target = re.search(r'custom_call_target="([^"]+)"', line)
      kinds[name] = f"{op}{'/' + kind if kind else ''}" + (
          f" {target.group(1)}" if target else "") + f" -> {shape[:60]}"
  return kinds


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("trace_dir")
  parser.add_argument("--top", type=int, default=40)
  args = parser.parse_args()
  events = device_events(args.trace_dir)
  by_stream = collections.Counter()
  for e, thread in events:
    by_stream[thread] += e["dur"]
  # Only the busiest stream's kernels: other streams (memcpy, ...) overlap with it.
  stream = by_stream.most_common(1)[0][0]
  totals, counts = collections.Counter(), collections.Counter()
  for e, thread in events:
    if thread == stream:
      key = e.get("args", {}).get("hlo_op") or e["name"]
      totals[key] += e["dur"]
      counts[key] += 1
  busy = sum(totals.values())
  spans = [e for e, t in events if t == stream]
  wall = max(e["ts"] + e["dur"] for e in spans) - min(e["ts"] for e in spans)
  kinds = hlo_kinds(args.trace_dir)
  print(f"streams (us): {dict(by_stream)}")
  print(f"busiest stream {stream!r}: busy {busy / 1e3:.1f} ms of {wall / 1e3:.1f} ms traced")
  print(f"{'ms':>8}{'share':>7}{'calls':>6}  name")
  for key, dur in totals.most_common(args.top):
    print(f"{dur / 1e3:>8.2f}{dur / busy:>7.1%}{counts[key]:>6}  {key[:70]}  "
          f"{kinds.get(key, '')}")
  categories = collections.Counter()
  for key, dur in totals.items():
    k = kinds.get(key, key)
    cat = ("gemm" if re.search(r"gemm|cublas|matmul|dot", k + key, re.I) else
           "attention" if re.search(r"cudnn|fmha|flash|attention", k + key, re.I) else
           "fusion" if "fusion" in k + key else "other")
    categories[cat] += dur
  print("by category (ms): " + ", ".join(f"{c} {d / 1e3:.1f} ({d / busy:.0%})"
                                        for c, d in categories.most_common()))


if __name__ == "__main__":
  main()
