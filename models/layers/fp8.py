"""fp8 matmuls (e4m3 inputs and kernels, e5m2 gradients) with delayed scaling: flax's ops.

    nn.Dense(n, dot_general_cls=FP8_DOT_GENERAL)        # a Dense layer's matmul in fp8
    FP8_EINSUM(name="fp8")("btd,dnh->btnh", x, kernel)  # an einsum in fp8

Each op keeps per-tensor scales and a history of the last `amax_history_length` absolute
maxima of its input, kernel and output gradient in the collection COLLECTION. They are not
trained: a step's "gradient" of each is its next value (flax's overwrite-with-gradient
convention), which train_lib/step.py writes back into the model state, so the scales are
part of the train state and of every checkpoint. Models take `fp8: bool` (config.dtype
"fp8": bfloat16 compute with these matmuls).
"""

from flax.linen import fp8_ops

COLLECTION = fp8_ops.OVERWRITE_WITH_GRADIENT
FP8_DOT_GENERAL = fp8_ops.Fp8DirectDotGeneralOp
FP8_EINSUM = fp8_ops.Fp8Einsum
MAX_DTYPE = fp8_ops.fm32   # float32 whose autodiff sum is a max (several uses, micro-batches)
