"""Plots drawn from metrics.jsonl into workdir/plots/.

    plots.loss_curves(workdir)   # -> workdir/plots/loss.png (train and eval loss by step)
"""

import os

from absl import logging

from train_lib import writers


def loss_curves(workdir: str, title: str = "") -> str:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    logging.warning("matplotlib is not installed; no plot drawn")
    return ""
  series = writers.read_curves(workdir, "loss")
  if not series:
    return ""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for split, points in sorted(series.items()):
    steps = sorted(points)
    ax.plot(steps, [points[s] for s in steps], marker="o" if split != "train" else None,
            markersize=3, label=f"{split} loss")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(title or os.path.basename(os.path.normpath(workdir)))
  ax.grid(alpha=0.3)
  ax.legend()
  os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
  path = os.path.join(workdir, "plots", "loss.png")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
