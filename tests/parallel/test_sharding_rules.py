"""The sharding rules split the first axis of every matrix of X-CLIP over `fsdp` and replicate the rest, matching
names in full."""

import logging
import re
import types

import jax
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import xclip_jax
from xclip_jax import param_rules
from xclip_jax.parallel import sharding
from xclip_jax.weights import official

# Written out by hand: Linear and conv weights (out, in, ...), the projections and the token embedding are split on
# their first axis; biases, LayerNorms, embeddings and `logit_scale` are replicated.
EXPECTED = {
  "visual/conv1/weight": P("fsdp", None, None, None),
  "visual/transformer/resblocks_0/message_fc/weight": P("fsdp", None),
  "visual/transformer/resblocks_0/attn/in_proj/weight": P("fsdp", None),
  "mit/resblocks_0/attn/in_proj/weight": P("fsdp", None),
  "prompts_generator/decoder_0/cross_attn/q_proj/weight": P("fsdp", None),
  "transformer/resblocks_1/mlp/c_proj/weight": P("fsdp", None),
  "visual/proj": P("fsdp", None),
  "text_projection": P("fsdp", None),
  "prompts_visual_proj": P("fsdp", None),
  "token_embedding/embedding": P("fsdp", None),
  "visual/transformer/resblocks_0/attn/in_proj/bias": P(None),
  "visual/transformer/resblocks_0/message_ln/scale": P(None),
  "visual/class_embedding": P(None),
  "visual/positional_embedding": P(None, None),
  "mit/positional_embedding": P(None, None, None),
  "prompts_generator/alpha": P(None),
  "logit_scale": P(),
}


@pytest.fixture(scope="module")
def params():
  config = xclip_jax.XCLIPConfig(
    embed_dim=32,
    image_resolution=32,
    vision_layers=1,
    vision_width=64,
    vision_patch_size=16,
    transformer_width=64,
    transformer_heads=2,
    transformer_layers=2,
    num_frames=2,
    prompts_layers=1,
  )
  return official.abstract_params(config)


def test_specs_of_named_parameters(params, caplog):
  caplog.set_level(logging.INFO)
  shardings = sharding.flat_names(sharding.tree_shardings(params, sharding.make_mesh({}), log="sharding"))
  assert {name: shardings[name].spec for name in EXPECTED} == EXPECTED
  assert "sharding: rules over 90 parameters" in caplog.text
  assert ".*/weight -> P('fsdp',): 26 (" in caplog.text


def test_names_match_in_full():
  specs = param_rules.match(sharding.PARAM_RULES, ["visual/proj", "visual/proj_extra", "decoder/text_projection"])
  assert specs == {"visual/proj": P("fsdp"), "visual/proj_extra": P(), "decoder/text_projection": P()}


def test_an_axis_the_mesh_does_not_divide_is_left_whole():
  """fsdp=4 splits a first axis of 8, not one of 6 (which jit would refuse): that array is replicated instead."""
  mesh = AbstractMesh((1, 4, 1), sharding.MESH_AXES)  # sizes without devices
  tree = {
    "text_projection": jax.ShapeDtypeStruct((8, 32), np.float32),
    "visual": {"proj": jax.ShapeDtypeStruct((6, 32), np.float32)},
  }
  specs = {name: s.spec for name, s in sharding.flat_names(sharding.tree_shardings(tree, mesh)).items()}
  assert specs == {"text_projection": P("fsdp", None), "visual/proj": P(None, None)}


@pytest.mark.parametrize(
  "axes, error",
  [
    ({"data": 0, "time": -1}, "mesh.data=0 must be at least 1 (or -1: the devices the other axes leave)"),
    # Their product, 8, matched the devices; numpy's reshape then failed naming neither.
    ({"data": -2, "fsdp": -4}, "mesh.data=-2 must be at least 1"),
    ({"data": -1, "fsdp": -1}, "at most one mesh axis may be -1"),
    ({"data": 3}, "mesh {'data': 3, 'fsdp': 1, 'time': 1} needs 3 devices, 8 are present"),
    ({"data": -1, "fsdp": 3}, "8 devices do not divide into mesh"),
    ({"model": 2}, "unknown mesh axes ['model']"),
  ],
)
def test_a_mesh_that_cannot_be_built_is_refused_naming_the_axis(axes, error):
  eight_devices = jax.devices()[:1] * 8  # only their number counts before the mesh is built
  with pytest.raises(ValueError, match=re.escape(error)):
    sharding.make_mesh(axes, eight_devices)


def _mesh_of_processes(sizes: dict, devices_per_process: int):
  """A stand-in for a mesh over devices of processes 0, 1, ... (`devices_per_process` each), in jax.devices()'s
  order, as make_mesh lays them out."""
  count = int(np.prod(list(sizes.values())))
  devices = [types.SimpleNamespace(process_index=i // devices_per_process) for i in range(count)]
  shape = [sizes[axis] for axis in sharding.MESH_AXES]
  return types.SimpleNamespace(devices=np.array(devices).reshape(shape), axis_names=sharding.MESH_AXES, shape=sizes)


@pytest.mark.parametrize(
  "sizes, devices_per_process, refusal",
  [
    ({"data": 2, "fsdp": 1, "time": 2}, 2, None),
    ({"data": 1, "fsdp": 2, "time": 2}, 2, None),
    ({"data": 1, "fsdp": 1, "time": 4}, 2, "mesh.time=4 .* a divisor of the 2 devices of each process"),
    # One process per GPU, as launch/slurm_gpu.sh runs.
    ({"data": 2, "fsdp": 1, "time": 2}, 1, "mesh.time=2 .* a divisor of the 1 device of each process"),
  ],
)
def test_a_time_axis_over_the_devices_of_several_processes_is_refused(sizes, devices_per_process, refusal):
  """Each process reads whole clips, so the devices sharing one clip's frames must be its own."""
  mesh = _mesh_of_processes(sizes, devices_per_process)
  if refusal is None:
    sharding.check_time_within_processes(mesh)
    return
  with pytest.raises(ValueError, match=refusal):
    sharding.check_time_within_processes(mesh)
