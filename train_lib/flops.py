"""Model FLOPs counted from the jaxpr: the same number on a CPU, a GPU or a TPU, whichever
kernels the "auto" implementations pick, and for scanned layers.

    flops = flops.count(jax.make_jaxpr(fn)(*args))          # one call of fn
    flops = flops.forward_flops(fn, *shape_dtype_structs)    # the same, traced on shapes
    per_item = flops.train_flops_per_item(s, rows=micro_batch_rows)   # s: setup.Setup
    notes = []; flops.count(jaxpr, notes)                    # what could only be estimated

What is counted (the MFU convention): matrix multiplies and convolutions, 2 FLOPs per
multiply-add; elementwise ops, reductions, normalisations, softmax, gathers and scatters
are not.
- dot_general: 2 x out elements x contracted size; ragged_dot_general the same, each row
  multiplied by its own group's matrix only.
- conv_general_dilated: 2 x out elements x kernel window x in-features per group (the
  kernel's in-feature size, which feature_group_count and batch_group_count already
  divide). Taps on the zeros that padding adds are counted, as cuDNN computes them and
  the usual tables count them; taps on the holes that lhs_dilation inserts (a transposed
  conv) are not: those are multiply-adds no kernel performs.
- cuDNN attention (jax.nn.dot_product_attention(implementation="cudnn"), the primitive
  dot_product_attention_fwd[_wrapper]): 2 x B x N x T x S x (H_qk + H_v), i.e. 4BNTSH for
  QK^T and PV, read from the operands' shapes and layout. Causal attention is counted in
  full, as the XLA implementation computes it (and as 12 L D T in the 6N formula counts
  it); the backward primitive, if traced, counts 2x its forward.
- Sub-jaxprs: jit, closed_call, remat/checkpoint, custom_jvp/custom_vjp (the primal
  function), cond (its most expensive branch) and any other primitive that carries
  jaxprs in its params (the most expensive of them) once; scan x length; while x trip
  count when it is a fori_loop with literal bounds, else once with a note; shard_map x
  the devices of its manual axes (its body sees one shard); pallas_call its
  cost_estimate.flops if given, else its kernel body x the grid size.

train_flops_per_item counts one training step as 3 x the forward FLOPs of the task's loss
(the backward pass as 2 x the forward, as in the 6N rule); the recomputation of
rematerialised (jax.checkpoint / model.remat) activations is not counted, as MFU does not
count it. Only tracing: no compilation, no device memory.
"""

import math

import jax
import numpy as np
from jax.extend import core

ATTENTION_FWD = ("dot_product_attention_fwd", "dot_product_attention_fwd_wrapper",
                 "dot_product_attention_fp8_fwd", "dot_product_attention_fp8_fwd_wrapper")
ATTENTION_BWD = ("dot_product_attention_bwd", "dot_product_attention_bwd_wrapper",
                 "dot_product_attention_fp8_bwd", "dot_product_attention_fp8_bwd_wrapper")


def count(closed_jaxpr, notes=None) -> float:
  """Matmul and convolution FLOPs of one evaluation of `closed_jaxpr` (a ClosedJaxpr, e.g.
  from jax.make_jaxpr, or a Jaxpr). Where a count is an estimate (a while loop of unknown
  trip count), a line saying so is appended to `notes` (a list) if given."""
  notes = [] if notes is None else notes
  return float(_jaxpr_flops(_open(closed_jaxpr), notes))


def forward_flops(fn, *args, notes=None, **kwargs) -> float:
  """count(jax.make_jaxpr(fn)(*args, **kwargs)); args may be jax.ShapeDtypeStructs."""
  return count(jax.make_jaxpr(fn)(*args, **kwargs), notes)


def train_flops_per_item(s, rows: int = 0, notes=None) -> float:
  """Model FLOPs of one training step per example or token (s.task.unit) for a
  train_lib.setup.Setup `s`: 3 x the forward FLOPs of the task's loss
  (step.loss_and_stats with train=True, summed over task.groups), divided by
  s.task.items_per_batch(rows). `rows`: the rows of one micro-batch
  (config.data.batch_size // config.optim.grad_accum_steps; default 0 = data.batch_size).
  Most costs are linear in rows, but not all (SimCLR's [2B, 2B] similarities), so the
  real micro-batch is traced: tracing costs the same at any size. Traced without the mesh
  (global shapes, no shard_map of the kernels)."""
  from train_lib import step   # here: setup may import this module
  rows = rows or s.data.config.batch_size
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((rows, *x.shape[1:]), x.dtype),
                       s.dummy_batch)
  st = s.abstract_state
  total = 0.0
  for group in s.task.groups:
    def loss(params, model_state, batch, key, group=group):
      return step.loss_and_stats(s.model, s.task, params, model_state, batch, key,
                                 train=True, group=group)
    total += forward_flops(loss, st.params, st.model_state, batch, st.rng, notes=notes)
  return 3.0 * total / s.task.items_per_batch(rows)


# ------------------------------------------------------------------------- the walk


def _open(jaxpr):
  return jaxpr.jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else jaxpr


def _jaxpr_flops(jaxpr, notes) -> int:
  return sum(_eqn_flops(eqn, notes) for eqn in jaxpr.eqns)


def _eqn_flops(eqn, notes) -> int:
  name, p = eqn.primitive.name, eqn.params
  rule = _RULES.get(name)
  if rule is not None:
    return rule(eqn, notes)
  if name in ATTENTION_FWD:
    return _attention(eqn)
  if name in ATTENTION_BWD:
    return 2 * _attention(eqn)
  if name == "scan":
    return p["length"] * _jaxpr_flops(_open(p["jaxpr"]), notes)
  if name == "while":
    return _while(eqn, notes)
  if name == "shard_map":
    mesh = p["mesh"]
    axes = p.get("newly_manual_axes", mesh.axis_names)
    return math.prod(mesh.shape[a] for a in axes) * _jaxpr_flops(_open(p["jaxpr"]), notes)
  if name == "pallas_call":
    return _pallas(eqn, notes)
  if name == "xla_pmap":
    return p["axis_size"] * _jaxpr_flops(_open(p["call_jaxpr"]), notes)
  # jit, closed_call, remat, custom_jvp_call, custom_vjp_call (the primal), cond (its
  # branches), and any other primitive carrying jaxprs: the most expensive one, once.
  return max((_jaxpr_flops(j, notes) for j in core.jaxprs_in_params(p)), default=0)


def _shape(v):
  return tuple(v.aval.shape)


def _dot_general(eqn, notes) -> int:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = _shape(eqn.invars[0])
  return 2 * math.prod(_shape(eqn.outvars[0])) * math.prod(lhs[d] for d in lhs_contract)


def _ragged_dot(eqn, notes) -> int:
  dims = eqn.params["ragged_dot_dimension_numbers"]
  (lhs_contract, _), _ = dims.dot_dimension_numbers
  lhs = _shape(eqn.invars[0])
  flops = 2 * math.prod(_shape(eqn.outvars[0])) * math.prod(lhs[d] for d in lhs_contract)
  if set(dims.lhs_ragged_dimensions) & set(lhs_contract):
    # ragged contraction: the output has one slice per group, each over its own rows of K
    flops //= _shape(eqn.invars[2])[-1]
  return flops


def _conv(eqn, notes) -> int:
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  rhs, out = _shape(eqn.invars[1]), _shape(eqn.outvars[0])
  taps = 1
  for i in range(len(rhs_spec) - 2):
    size, k = out[out_spec[2 + i]], rhs[rhs_spec[2 + i]]
    dilation = p["lhs_dilation"][i]
    if dilation == 1:
      taps *= size * k
      continue
    # Window positions in the padded, dilated input; only those on a real element (not a
    # hole between elements) are multiply-adds.
    pos = (np.arange(size)[:, None] * p["window_strides"][i] +
           np.arange(k)[None, :] * p["rhs_dilation"][i] - p["padding"][i][0])
    taps *= int(np.count_nonzero(pos % dilation == 0))
  spatial = math.prod(out[d] for d in out_spec[2:])
  return 2 * (math.prod(out) // spatial) * rhs[rhs_spec[1]] * taps


def _attention(eqn) -> int:
  """2 B N T S (H_qk + H_v) from query, key and value in layout BTNH (0) or BNTH (1)."""
  q, k, v = (_shape(x) for x in eqn.invars[:3])
  if eqn.params.get("layout", 0) == 1:   # BNTH
    (b, n, t, h), s, hv = q, k[2], v[3]
  else:                                  # BTNH
    (b, t, n, h), s, hv = q, k[1], v[3]
  return 2 * b * n * t * s * (h + hv)


def _while(eqn, notes) -> int:
  p = eqn.params
  cond, body = _open(p["cond_jaxpr"]), _open(p["body_jaxpr"])
  per_trip = _jaxpr_flops(body, notes) + _jaxpr_flops(cond, notes)
  trips = _fori_trips(eqn)
  if trips is None:
    if per_trip:
      notes.append(f"a while loop of {per_trip:,} FLOPs per trip has no static trip count; "
                   "counted once")
    return per_trip
  return trips * per_trip


def _fori_trips(eqn):
  """upper - lower of a fori_loop(lower, upper, ...) with literal bounds (a while whose cond
  is `i < upper` and whose body adds 1 to i), else None."""
  p = eqn.params
  cond, body = _open(p["cond_jaxpr"]), _open(p["body_jaxpr"])
  if len(cond.eqns) != 1 or cond.eqns[0].primitive.name != "lt":
    return None
  carry = cond.invars[p["cond_nconsts"]:]
  i_var, upper_var = cond.eqns[0].invars
  if i_var not in carry or upper_var not in carry:
    return None
  i, upper = carry.index(i_var), carry.index(upper_var)
  body_carry = body.invars[p["body_nconsts"]:]
  increments = [e for e in body.eqns if any(o is body.outvars[i] for o in e.outvars)]
  if (body.outvars[upper] is not body_carry[upper] or len(increments) != 1 or
      increments[0].primitive.name != "add" or increments[0].invars[0] is not body_carry[i]
      or not _is_literal(increments[0].invars[1], 1)):
    return None
  init = eqn.invars[p["cond_nconsts"] + p["body_nconsts"]:]
  if not (isinstance(init[i], core.Literal) and isinstance(init[upper], core.Literal)):
    return None
  return max(int(init[upper].val) - int(init[i].val), 0)


def _is_literal(v, value) -> bool:
  return isinstance(v, core.Literal) and np.ndim(v.val) == 0 and v.val == value


def _pallas(eqn, notes) -> int:
  p = eqn.params
  estimate = p.get("cost_estimate")
  if estimate is not None:
    return int(estimate.flops)
  grid = tuple(getattr(p.get("grid_mapping"), "grid", ()))
  body = _jaxpr_flops(_open(p["jaxpr"]), notes)
  if not all(isinstance(g, int) for g in grid):
    if body:
      notes.append(f"a Pallas kernel of {body:,} FLOPs per program has a dynamic grid "
                   f"{grid}; counted once")
    return body
  return math.prod(grid) * body


_RULES = {"dot_general": _dot_general, "ragged_dot_general": _ragged_dot,
          "conv_general_dilated": _conv}
