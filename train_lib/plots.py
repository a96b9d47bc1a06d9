"""Plots drawn from metrics.jsonl into workdir/plots/.

    plots.loss_curves(workdir)   # -> workdir/plots/loss.png (train and eval loss by step)
    plots.ablation_curves(workdir, {"train loss": {"baseline": {10: 2.3, ...}, ...}, ...})
"""

import os

from absl import logging

from train_lib import writers


def _pyplot():
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    logging.warning("matplotlib is not installed; no plot drawn")
    return None
  return plt


def _save(plt, fig, workdir: str, name: str) -> str:
  os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
  path = os.path.join(workdir, "plots", name)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def loss_curves(workdir: str, title: str = "") -> str:
  plt = _pyplot()
  series = writers.read_curves(workdir, "loss")
  if plt is None or not series:
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
  return _save(plt, fig, workdir, "loss.png")


def ablation_curves(workdir: str, panels: dict, title: str = "") -> str:
  """One panel per {panel title: {variant: {step: value}}}; the first variant (the
  baseline) is drawn black. -> workdir/plots/ablation.png"""
  plt = _pyplot()
  if plt is None or not panels:
    return ""
  fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
  for ax, (name, curves) in zip(axes[0], panels.items()):
    for i, (variant, points) in enumerate(curves.items()):
      steps = sorted(points)
      style = {"color": "black", "linewidth": 2.2} if i == 0 else {"linewidth": 1.2}
      ax.plot(steps, [points[s] for s in steps], label=variant,
              marker="o" if len(steps) < 12 else None, markersize=3, **style)
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=8)
  fig.suptitle(title)
  return _save(plt, fig, workdir, "ablation.png")
