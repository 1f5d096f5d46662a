"""Where a compiled program's time goes besides its matrix multiplies, from JAX's profiler trace.

  breakdown = step_profile.profile(compiled.as_text(), run_once, calls=2)  # run_once: one call, waited for

XLA's CPU runtime records a trace event for every HLO instruction it executes (a "thunk"), named as the instruction in
the compiled module; GPU traces name each kernel's instruction in its `hlo_op` argument. The events of `calls` calls
are split by a sweep over time into
  matmul_s     time during which a contraction runs: an instruction that is, or fuses, a dot or a convolution
  exposed_s    time during which other instructions run and no contraction does, shared equally among those
               running: by phase (`forward`, `backward`: under a jvp or its transpose; `other`: the optimiser update,
               Mixup, loss and metrics) and, in `top_exposed`, by where in the model (layers numbered alike merged)
  idle_s       the rest of the traced span: dispatch, waiting, gaps between calls
each per call. A contraction slowed by what runs beside it counts as matmul time: compare `matmul_s` with the
benchmark's `matmul_only_s`. Where no event names an instruction of the module, `available` is false, with why.
"""

import collections
from collections.abc import Callable
import gzip
import json
import pathlib
import re
import tempfile

import jax

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*)$")
_OPCODE = re.compile(r"^(?:\([^=]*?\)|\S+) ([\w\-]+)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_CONTRACTIONS = ("dot", "convolution")
# Library contractions called by name (cuBLAS, cuDNN, oneDNN).
_CONTRACTION_TARGETS = re.compile(r"gemm|matmul|conv", re.IGNORECASE)
# Instructions whose bodies' instructions are traced themselves.
_CONTAINERS = ("while", "conditional", "call")


def instruction_table(hlo_text: str) -> dict[str, tuple[bool, str]]:
  """{instruction name: (whether it is or fuses a contraction, its op_name metadata)} of a compiled module's text,
  loops and calls left out: their bodies' instructions are traced themselves."""
  opcodes, calls, op_names, targets = {}, {}, {}, {}
  members = collections.defaultdict(list)
  computation = None
  for line in hlo_text.splitlines():
    if not line.startswith(" "):
      match = _COMPUTATION.match(line)
      computation = match.group(1) if match else None
      continue
    match = _INSTRUCTION.match(line)
    if not (match and computation):
      continue
    name, rest = match.groups()
    opcode = _OPCODE.match(rest)
    opcodes[name] = opcode.group(1) if opcode else ""
    calls[name] = _CALLS.findall(rest)
    op_name = _OP_NAME.search(rest)
    op_names[name] = op_name.group(1) if op_name else ""
    target = _TARGET.search(rest)
    targets[name] = target.group(1) if target else ""
    members[computation].append(name)

  contracts = {}

  def computation_contracts(computation: str) -> bool:
    return any(instruction_contracts(member) for member in members.get(computation, ()))

  def instruction_contracts(name: str) -> bool:
    if name not in contracts:
      contracts[name] = (
        opcodes[name] in _CONTRACTIONS
        or bool(_CONTRACTION_TARGETS.search(targets[name]))
        or (opcodes[name] in ("fusion", "custom-call") and any(computation_contracts(c) for c in calls[name]))
      )
    return contracts[name]

  return {name: (instruction_contracts(name), op_names[name]) for name in opcodes if opcodes[name] not in _CONTAINERS}


def phase(op_name: str) -> str:
  """`backward` under a transposed jvp, `forward` under a jvp, else `other` (the update, Mixup, loss, metrics)."""
  if "transpose(" in op_name:
    return "backward"
  if "jvp(" in op_name:
    return "forward"
  return "other"


def place(op_name: str) -> str:
  """Where in the model: the op_name's path without its transformations (`jit(step)`, `transpose(jvp(...))`), layers
  of one stack (`resblocks_3`) merged."""
  path = "/".join(part for part in op_name.split("/") if "(" not in part)
  return re.sub(r"\b(resblocks|layers|decoder)_\d+", r"\1_N", path) or "(no op_name)"


def breakdown(events: list[tuple[float, float, str]], table: dict[str, tuple[bool, str]], calls: int) -> dict:
  """The split described in the module docstring of (start, end, instruction name) events, times in seconds."""
  events = [(start, end, name) for start, end, name in events if name in table and end > start]
  if not events:
    return {"available": False, "reason": "no trace event names an instruction of the compiled module"}
  boundaries = sorted({t for start, end, _ in events for t in (start, end)})
  starting = collections.defaultdict(list)
  for start, end, name in events:
    starting[start].append((end, name))
  active, matmul, idle = [], 0.0, 0.0
  exposed = collections.Counter()
  for left, right in zip(boundaries, boundaries[1:]):
    active = [(end, name) for end, name in active if end > left] + starting[left]
    length = right - left
    if any(table[name][0] for _, name in active):
      matmul += length
    elif active:
      for _, name in active:
        exposed[name] += length / len(active)
    else:
      idle += length
  by_phase, by_place = collections.Counter(), collections.Counter()
  for name, seconds in exposed.items():
    op_name = table[name][1]
    when = phase(op_name)
    by_phase[when] += seconds / calls
    by_place[f"{when} {place(op_name)}"] += seconds / calls
  return {
    "available": True,
    "calls": calls,
    "traced_s": (boundaries[-1] - boundaries[0]) / calls,
    "matmul_s": matmul / calls,
    "exposed_s": sum(exposed.values()) / calls,
    "idle_s": idle / calls,
    "exposed_by_phase_s": {key: by_phase[key] for key in ("forward", "backward", "other")},
    "top_exposed": [[where, seconds] for where, seconds in by_place.most_common(12)],
  }


def profile(hlo_text: str, run_once: Callable[[], None], calls: int = 2) -> dict:
  """Traces `calls` calls of `run_once` (each waited for) and splits their time (`breakdown`)."""
  with tempfile.TemporaryDirectory() as folder:
    try:
      jax.profiler.start_trace(folder, create_perfetto_trace=True)
    except Exception as error:  # pylint: disable=broad-exception-caught  # e.g. a GPU without CUPTI: the rest stands
      return {"available": False, "reason": f"the profiler did not start: {error}"}
    try:
      for _ in range(calls):
        run_once()
    finally:
      jax.profiler.stop_trace()
    traces = sorted(pathlib.Path(folder).glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not traces:
      return {"available": False, "reason": "the profiler wrote no perfetto trace"}
    with gzip.open(traces[-1]) as file:
      trace = json.load(file)
  events = []
  for event in trace["traceEvents"] if isinstance(trace, dict) else trace:
    if event.get("ph") == "X" and "dur" in event:
      name = event.get("args", {}).get("hlo_op", event["name"])
      events.append((event["ts"] * 1e-6, (event["ts"] + event["dur"]) * 1e-6, name))
  return breakdown(events, instruction_table(hlo_text), calls)
