"""The train benchmark's profile: which instructions are contractions, and how a trace's time is split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import step_profile

# A compiled module's text as XLA prints it, cut down: a fusion around a dot, a loop, a library gemm, plain ops.
_MODULE = """HloModule jit_step, entry_computation_layout={(f32[8,8]{1,0})->f32[8,8]{1,0}}

%fused_dot (p0: f32[8,8], p1: f32[8,8]) -> f32[8,8] {
  %p0 = f32[8,8]{1,0} parameter(0)
  %p1 = f32[8,8]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_add (p0.1: f32[8,8]) -> f32[8,8] {
  %p0.1 = f32[8,8]{1,0} parameter(0)
  ROOT %add.2 = f32[8,8]{1,0} add(%p0.1, %p0.1)
}

%body (t: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {
  %t = (s32[], f32[8,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = f32[8,8]{1,0} get-tuple-element(%t), index=1
  %dot.3 = f32[8,8]{1,0} dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %tuple.1 = (s32[], f32[8,8]{1,0}) tuple(%i, %dot.3)
}

ENTRY %main.9 (a: f32[8,8]) -> f32[8,8] {
  %a = f32[8,8]{1,0} parameter(0)
  %ynn_fusion.7 = f32[8,8]{1,0} fusion(%a, %a), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(step)/jvp(f)/layers_3/dense/dot_general"}
  %add_fusion = f32[8,8]{1,0} fusion(%ynn_fusion.7), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/transpose(jvp(f))/layers_3/add"}
  %gemm = (f32[8,8]{1,0}, s8[64]{0}) custom-call(%a, %a), custom_call_target="__cublas$gemm"
  %while.2 = (s32[], f32[8,8]{1,0}) while(%tuple.0), condition=%cond, body=%body
  ROOT %copy.4 = f32[8,8]{1,0} copy(%add_fusion)
}
"""


def test_instruction_table_marks_contractions_fused_called_or_looped_and_leaves_out_loops():
  table = step_profile.instruction_table(_MODULE)
  assert {name: table[name][0] for name in ("ynn_fusion.7", "add_fusion", "gemm", "dot.3", "copy.4")} == {
    "ynn_fusion.7": True,
    "add_fusion": False,
    "gemm": True,
    "dot.3": True,
    "copy.4": False,
  }
  assert "while.2" not in table  # its body's instructions are traced themselves
  assert table["add_fusion"][1] == "jit(step)/transpose(jvp(f))/layers_3/add"


def test_phase_and_place_of_op_names():
  backward = "jit(step)/transpose(jvp(XCLIP.logits_from_features))/XCLIP.encode_video/visual/resblocks_5/mlp/mul"
  assert step_profile.phase(backward) == "backward"
  assert step_profile.phase("jit(step)/jvp(XCLIP.logits_from_features)/visual/resblocks_5/add") == "forward"
  assert step_profile.phase("jit(step)/add") == "other"
  assert step_profile.place(backward) == "XCLIP.encode_video/visual/resblocks_N/mlp/mul"
  assert step_profile.place("") == "(no op_name)"


def test_breakdown_splits_a_trace_by_hand():
  table = {
    "dot.a": (True, "jit(step)/jvp(f)/dense/dot_general"),
    "dot.e": (True, "jit(step)/transpose(jvp(f))/dense/dot_general"),
    "gelu": (False, "jit(step)/jvp(f)/layers_1/mul"),
    "adam": (False, "jit(step)/add"),
    "ln": (False, "jit(step)/transpose(jvp(f))/layers_2/ln/mul"),
  }
  # Two calls' worth (seconds): a contraction 0-10 with gelu 5-15 beside it, adam 15-20 with ln 16-18 beside it,
  # nothing 20-22, a contraction 22-30; an event of no instruction (the executor's own) is ignored.
  events = [(0, 10, "dot.a"), (5, 15, "gelu"), (15, 20, "adam"), (16, 18, "ln"), (22, 30, "dot.e"), (0, 30, "thunk")]
  result = step_profile.breakdown(events, table, calls=2)
  expected = {
    "traced_s": 15.0,
    "matmul_s": 9.0,  # (10 + 8) / 2
    "exposed_s": 5.0,  # gelu 10-15 alone, adam 15-16 and 18-20 alone, adam and ln 16-18 halved: (5 + 3 + 1 + 1) / 2
    "idle_s": 1.0,
  }
  assert {key: result[key] for key in expected} == pytest.approx(expected)
  assert result["exposed_by_phase_s"] == pytest.approx({"forward": 2.5, "backward": 0.5, "other": 2.0})
  assert result["top_exposed"][0] == ["forward layers_N/mul", pytest.approx(2.5)]


def test_breakdown_without_matching_events_says_so():
  result = step_profile.breakdown([(0, 1, "ThunkExecutor::Execute")], {"dot.1": (True, "")}, calls=1)
  assert result == {"available": False, "reason": "no trace event names an instruction of the compiled module"}


def test_profile_of_a_compiled_cpu_gradient_finds_its_contractions_and_the_work_between_them():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(256, 256)), jnp.float32)
  grad = jax.jit(jax.grad(lambda w: jnp.sum(jnp.sin(x @ w) ** 3)))
  compiled = grad.lower(x).compile()
  result = step_profile.profile(compiled.as_text(), lambda: jax.block_until_ready(compiled(x)), calls=3)
  assert result["available"] and result["matmul_s"] > 0 and result["exposed_s"] > 0, (
    result
  )  # sin, cube, cos: not matmuls
  assert result["traced_s"] == pytest.approx(result["matmul_s"] + result["exposed_s"] + result["idle_s"])
