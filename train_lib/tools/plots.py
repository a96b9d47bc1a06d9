"""Plots drawn from metrics.jsonl into workdir/plots/.

    plots.loss_curves(workdir)   # -> workdir/plots/loss.png (train and eval loss by step)
    fig = plots.loss_figure(workdir)   # the same figure, unsaved: ax.lines hold the data
    plots.ablation_curves(workdir, {"train loss": {"baseline": {10: 2.3, ...}, ...}, ...})
    plots.image_grid(path, images_BxHxWxC, labels_B)   # --mode=sanity's data examples
    plots.lr_range(path, lrs, losses, smoothed, suggested)   # --mode=lr_range

Without matplotlib each returns "" and draws nothing.
"""

import os

import numpy as np
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


def _save(plt, fig, path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def loss_figure(workdir: str, title: str = ""):
  """The figure that loss_curves saves (None without matplotlib or loss lines): one line
  "{split} loss" per split of metrics.jsonl, the x axis from step 0, where the train
  line's step-0 point (the loss at initialisation) is marked "initial loss"; a log y axis
  where every loss is positive, else a linear one."""
  plt = _pyplot()
  series = writers.read_curves(workdir, "loss")
  series = {split: points for split, points in series.items() if points}
  if plt is None or not series:
    return None
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for split, points in sorted(series.items()):
    steps = sorted(points)
    line, = ax.plot(steps, [points[s] for s in steps], marker="o" if split != "train" else None,
                    markersize=3, label=f"{split} loss")
    if split == "train" and 0 in points:
      ax.plot([0], [points[0]], marker="o", linestyle="none", color=line.get_color(),
              label="initial loss")
  values = np.array([v for points in series.values() for v in points.values()], np.float64)
  values = values[np.isfinite(values)]
  if len(values) and values.min() > 0:   # losses fall by orders of magnitude
    ax.set_yscale("log")
  ax.set_xlim(left=0)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(title or os.path.basename(os.path.normpath(workdir)))
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  return fig


def loss_curves(workdir: str, title: str = "") -> str:
  fig = loss_figure(workdir, title)
  if fig is None:
    return ""
  return _save(_pyplot(), fig, os.path.join(workdir, "plots", "loss.png"))


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
  return _save(plt, fig, os.path.join(workdir, "plots", "ablation.png"))


def image_grid(path: str, images_BxHxWxC, labels_B=None, columns: int = 8,
               stretch: bool = True) -> str:
  """Images in one mosaic, each labelled if given; each stretched to [0, 1], or with
  stretch=False taken as already in [0, 1]."""
  plt = _pyplot()
  if plt is None:
    return ""
  images = np.asarray(images_BxHxWxC, np.float32)
  images = images if images.shape[-1] == 3 else images[..., :1].repeat(3, -1)
  if stretch:
    low = images.min(axis=(1, 2, 3), keepdims=True)
    span = images.max(axis=(1, 2, 3), keepdims=True) - low
    images = (images - low) / np.where(span > 0, span, 1.0)
  images = np.clip(images, 0.0, 1.0)
  B, H, W, _ = images.shape
  rows, gap = -(-B // columns), max(1, H // 8)
  mosaic = np.ones((rows * (H + gap), columns * (W + gap), 3), np.float32)
  for i, image in enumerate(images):
    y, x = i // columns * (H + gap), i % columns * (W + gap)
    mosaic[y:y + H, x:x + W] = image
  fig, ax = plt.subplots(figsize=(1.2 * columns, 1.2 * rows))
  ax.imshow(mosaic, interpolation="nearest")
  for i, label in enumerate([] if labels_B is None else labels_B[:B]):
    ax.text(i % columns * (W + gap), i // columns * (H + gap), str(label), color="tab:red",
            fontsize=8, va="top", ha="left")
  ax.axis("off")
  return _save(plt, fig, path)


def lr_range(path: str, lrs, losses, smoothed, suggested: float, title: str = "") -> str:
  """Loss against learning rate (log axis), raw and smoothed, the suggestion marked."""
  plt = _pyplot()
  if plt is None:
    return ""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.plot(lrs, losses, alpha=0.35, label="loss")
  ax.plot(lrs, smoothed, label="smoothed")
  ax.axvline(suggested, color="tab:red", linestyle="--", label=f"suggested {suggested:.2g}")
  finite = np.asarray(smoothed)[np.isfinite(smoothed)]
  if len(finite):  # the diverging tail would flatten the rest of the curve
    ax.set_ylim(finite.min() - 0.05 * abs(finite.min()), 1.5 * finite[0] + 0.1)
  ax.set_xscale("log")
  ax.set_xlabel("learning rate")
  ax.set_ylabel("loss")
  ax.set_title(title or "learning-rate range test")
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(plt, fig, path)
