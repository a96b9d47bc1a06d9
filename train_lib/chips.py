"""The accelerators' datasheet numbers: dense bf16 peak and memory per chip.

    chips.peak_tflops("TPU v5 lite")        # 197.0; 0.0 for a kind not listed
    chips.TPUS["v5p"]                       # Chip("TPU v5", 459.0, 95.0, source)

For the mfu in metrics.jsonl and `--mode=compile`'s "does it fit"; bench/ measures the
achievable matmul peak instead. A TPU topology name's generation ("v5e" of "v5e:4x4") keys
TPUS; jax reports the device_kind beside it. The memory is the HBM of one chip; where jax
shows one device per TensorCore (v4 in libtpu's topologies), each device has its share.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
  device_kind: str     # jax.Device.device_kind
  tflops: float        # dense bf16 peak of one chip, TFLOP/s
  hbm_gib: float       # memory of one chip
  source: str


_TPU_DOCS = "cloud.google.com/tpu/docs/"
TPUS = {  # Google's figures ("GB" in the tables) are taken as GiB, as the chips report them
    "v4": Chip("TPU v4", 275.0, 32.0, _TPU_DOCS + "v4"),
    "v5e": Chip("TPU v5 lite", 197.0, 16.0, _TPU_DOCS + "v5e"),
    "v5p": Chip("TPU v5", 459.0, 95.0, _TPU_DOCS + "v5p"),
    "v6e": Chip("TPU v6 lite", 918.0, 32.0, _TPU_DOCS + "v6e"),
}
GPUS = {  # matched as a substring of the device kind ("NVIDIA H100 80GB HBM3")
    "H100": Chip("H100", 989.4, 80.0, "nvidia.com H100 datasheet (SXM)"),
    "H200": Chip("H200", 989.4, 141.0 * 1e9 / 2**30, "nvidia.com H200 datasheet (SXM)"),
    "A100": Chip("A100", 312.0, 80.0, "nvidia.com A100 datasheet (80GB)"),
}


def lookup(device_kind: str):
  """The Chip of a jax device kind, or None."""
  for chip in TPUS.values():
    if chip.device_kind == device_kind:
      return chip
  return next((chip for name, chip in GPUS.items() if name in device_kind), None)


def peak_tflops(device_kind: str) -> float:
  chip = lookup(device_kind)
  return chip.tflops if chip else 0.0
