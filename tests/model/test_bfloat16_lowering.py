"""With `dtype="bfloat16"` the model's matrix work is bfloat16: every dot_general and convolution of the lowered train
step and evaluation forward (StableHLO) takes bfloat16 operands (a float32 result, accumulated in float32, is
allowed), except the float32 ones listed below with their reason; parameters and optimiser state stay float32.

Operations are named by their location in `lowered.as_text(debug_info=True)`: JAX's name stack, e.g.
`jit(step_fn)/transpose(jvp(XCLIP.logits_from_features))/.../resblocks_0/mlp/c_fc/...i,oi->...o/dot_general`.
"""

import functools
import re

import jax
import numpy as np
import pytest

from tests.fixtures import tiny
from xclip_jax.model import xclip
from xclip_jax.train import step as step_lib

# Float32 products by design. XCLIP.logits_from_features normalises the video and text features in float32 and takes
# their cosine similarities there, which exp(logit_scale) (about 100) scales into the logits: forward, and in the
# step its two gradients. LayerNorm statistics, softmax and the loss are float32 too, but they are not products.
ALLOWED_F32 = {r"/bd,bkd->bk/dot_general$": "the normalised-feature einsum of the logits, float32 by design"}

# A dot_general or convolution: its operand and result types and the location that names it.
_OP = re.compile(
  r"stablehlo\.(dot_general|convolution)\b.*: \(tensor<([^>]*)>, tensor<([^>]*)>\) -> tensor<([^>]*)> loc\((#loc\d+)\)"
)
_NAMED_LOCATION = re.compile(r'^(#loc\d+) = loc\("([^"]*)"', re.MULTILINE)


def products(lowered) -> list[tuple[str, str, str, str]]:
  """(lhs element type, rhs element type, result element type, name) of every dot_general and convolution."""
  text = lowered.as_text(debug_info=True)
  names = dict(_NAMED_LOCATION.findall(text))
  found = []
  for _, lhs, rhs, result, location in _OP.findall(text):
    found.append((*(t.split("x")[-1] for t in (lhs, rhs, result)), names.get(location, location)))
  return found


def float32_products(lowered) -> list[str]:
  """Names of the products with a float32 operand, after checking that every other one has bfloat16 operands."""
  found = products(lowered)
  assert found
  assert {(lhs, rhs) for lhs, rhs, _, _ in found} <= {("bf16", "bf16"), ("f32", "f32")}, found
  return [name for lhs, rhs, _, name in found if "f32" in (lhs, rhs)]


def unexplained(names: list[str], *listed: dict) -> list[str]:
  patterns = [pattern for table in listed for pattern in table]
  return [name for name in names if not any(re.search(pattern, name) for pattern in patterns)]


# (model overrides, experiment config overrides): the official frozen text tower, the text tower trained, remat.
@pytest.fixture(
  scope="module",
  params=[({}, {}), ({}, {"freeze_text": False}), ({"remat": True}, {})],
  ids=["frozen", "text", "remat"],
)
def step(request):
  model_overrides, config_overrides = request.param
  model = tiny.model(dtype="bfloat16", **model_overrides)
  state = step_lib.create_train_state(tiny.experiment_config(**config_overrides), model, tiny.text_ids())
  batch = tiny.batch(0)
  return jax.jit(step_lib.step_fn).lower(state, batch), jax.eval_shape(step_lib.step_fn, state, batch)[0]


@pytest.fixture(scope="module")
def eval_forward():
  model = tiny.model(dtype="bfloat16")
  forward = jax.jit(functools.partial(model.module.apply, method=xclip.XCLIP.logits_from_features))
  return forward.lower({"params": model.params}, tiny.batch(0)["video"], model.encode_text(tiny.text_ids()))


def test_train_step_products_are_bfloat16_but_the_listed_ones(step):
  lowered, _ = step
  names = float32_products(lowered)
  assert unexplained(names, ALLOWED_F32) == []
  # The allowance still applies, and to no more than it says: the forward einsum and its two gradients.
  assert len(names) - len(unexplained(names, ALLOWED_F32)) == 3


def test_eval_forward_products_are_bfloat16_but_the_final_einsum(eval_forward):
  names = float32_products(eval_forward)
  assert len(names) == 1 and unexplained(names, ALLOWED_F32) == []


def test_attention_logit_gradients_take_bfloat16_operands(step):
  """The attention logits q.k^T are float32 products of bfloat16 q and k; their float32 cotangent must not make the
  gradients dq and dk float32 products (nor those of the weights times v)."""
  lowered, _ = step
  attention_core = re.compile(r"^jit\(step_fn\)/transpose\(.*/(attn|message_attn|cross_attn)/dot_general$")
  gradients = [(lhs, rhs) for lhs, rhs, _, name in products(lowered) if attention_core.search(name)]
  assert gradients and set(gradients) == {("bf16", "bf16")}


def test_parameters_and_optimiser_state_stay_float32(step):
  _, new_state = step
  floats = [x.dtype for x in jax.tree.leaves((new_state.params, new_state.opt_state)) if x.dtype.kind == "f"]
  assert floats and set(floats) == {np.dtype(np.float32)}
