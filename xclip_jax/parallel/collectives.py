"""What a compiled program sends between devices: its collectives, read from the compiled HLO, by mesh axis.

  compiled = jax.jit(f, in_shardings=..., out_shardings=...).lower(*args).compile()
  for op in collectives.read(compiled.as_text()):
    op.kind, op.shapes, op.nbytes, collectives.crosses(op, mesh, "time")

Used by the tests that prove which tensors cross the `time` axis and by `benchmark --mode=memory`. Payload is
counted per device as the larger of what an operation takes and gives (an all-gather's result, a reduce-scatter's
operand), once per op: an op inside a loop body is marked `in_loop`, and runs once per iteration.
"""

import dataclasses
import itertools
import math
import re

import jax
import numpy as np

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_DTYPE_BYTES.update({"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8})

_INSTRUCTION = re.compile(
  r"^\s*(?:ROOT )?%(?P<name>\S+) = (?P<result>.+?) (?P<kind>"
  + "|".join(KINDS)
  + r")(?P<start>-start)?\((?P<operands>[^)]*)\)"
  r"(?P<attributes>.*)$"
)
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) ")
_WHILE_BODY = re.compile(r"\bwhile\(.*\bbody=%(\S+?)[,\s}]")
_IOTA = re.compile(r"\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")
_MESH = re.compile(r"mesh\[([^\]]*)\](?:, device_ids=\(([^)]*\)?)\))? \{([^}]*)\}")


@dataclasses.dataclass(frozen=True)
class Collective:
  name: str
  kind: str
  shapes: tuple[tuple[str, tuple[int, ...]], ...]  # (dtype, dims) of each result array, per device
  groups: tuple[tuple[int, ...], ...]  # partition ids exchanging data; () for all devices
  in_loop: bool
  op_name: str  # where in the program it comes from (the jaxpr's name stack, e.g. `.../resblocks_0/message_attn/...`)

  @property
  def nbytes(self) -> int:
    """Payload per device: the result (an all-gather's whole gathered array), or a reduce-scatter's operand."""
    result = sum(_DTYPE_BYTES[dtype] * math.prod(dims) for dtype, dims in self.shapes)
    return result * len(self.groups[0]) if self.kind == "reduce-scatter" and self.groups else result


def _shapes(text: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
  return tuple((dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims in _SHAPE.findall(text))


def _iota(dims: str, source: str, transpose: str | None) -> np.ndarray:
  source_dims = [int(d) for d in source.split(",")]
  ids = np.arange(math.prod(source_dims)).reshape(source_dims)
  if transpose:
    ids = ids.transpose([int(p) for p in transpose.split(",")])
  return ids.reshape([int(d) for d in dims.split(",")])


def _device_list(text: str) -> np.ndarray:
  """A device id list: `[4,2]T(1,0)` (an iota, transposed) or `[8]<=[8]`-like."""
  match = re.fullmatch(r"\[([\d,]+)\](?:<=\[([\d,]+)\])?(?:T\(([\d,]+)\))?", text.strip())
  if not match:
    raise ValueError(f"unknown device id list {text!r}")
  dims, source, transpose = match.groups()
  return _iota(dims, source or dims, transpose).reshape(-1)


def _groups(attributes: str) -> tuple[tuple[int, ...], ...]:
  """Replica groups in any of the printed forms: `{{0,1},{2,3}}`, `[4,2]<=[8]` (iota), `mesh[...] {axes}`."""
  if "replica_groups=" not in attributes and "source_target_pairs=" not in attributes:
    return ()
  pairs = re.search(r"source_target_pairs=\{([^=]*)\}", attributes)
  if pairs:
    return tuple(tuple(int(i) for i in pair.split(",")) for pair in re.findall(r"\{(\d+,\d+)\}", pairs.group(0)))
  value = attributes.split("replica_groups=", 1)[1]
  if value.startswith("{"):
    return tuple(
      tuple(int(i) for i in g.split(",") if i) for g in re.findall(r"\{([\d,]*)\}", value[: value.index("}}") + 2])
    )
  if value.startswith("mesh"):
    match = _MESH.match(value)
    if not match:
      raise ValueError(f"unknown replica group form {value[:120]!r}")
    axes = re.findall(r"'(\w+)'=(\d+)", match.group(1))
    names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
    ids = (_device_list(match.group(2)) if match.group(2) else np.arange(math.prod(sizes))).reshape(sizes)
    grouped = [names.index(a) for a in re.findall(r"'(\w+)'", match.group(3))]
    rest = [i for i in range(len(names)) if i not in grouped]
    ids = ids.transpose(rest + grouped).reshape(-1, math.prod(sizes[i] for i in grouped))
    return tuple(tuple(int(i) for i in row) for row in ids)
  match = _IOTA.match(value)
  if not match:
    raise ValueError(f"unknown replica group form {value[:120]!r}")
  return tuple(tuple(int(i) for i in row) for row in _iota(*match.groups()))


def read(hlo_text: str) -> list[Collective]:
  """Every collective of a compiled HLO module (the text of `compiled.as_text()`)."""
  loop_bodies = set(_WHILE_BODY.findall(hlo_text))
  computation = None
  found = []
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and line.rstrip().endswith("{"):
      computation = header.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    result = _shapes(match.group("result"))
    if match.group("start"):
      result = result[len(result) // 2 :]  # an async start gives (operands..., results...)
    op_name = re.search(r'op_name="([^"]*)"', match.group("attributes"))
    found.append(
      Collective(
        match.group("name"),
        match.group("kind"),
        result,
        _groups(match.group("attributes")),
        computation in loop_bodies,
        op_name.group(1) if op_name else "",
      )
    )
  return found


def crosses(op: Collective, mesh: jax.sharding.Mesh, axis: str) -> bool:
  """Whether `op` exchanges data between devices at different positions along mesh axis `axis`.

  Partition id i is the i-th device of the mesh in row-major order (how jit assigns devices for a mesh).
  """
  position = lambda pid: np.unravel_index(pid, mesh.devices.shape)[mesh.axis_names.index(axis)]
  groups = op.groups or (tuple(range(mesh.size)),)
  return any(len({position(pid) for pid in group}) > 1 for group in groups)


def parameter_shapes(params, mesh: jax.sharding.Mesh) -> set[tuple[int, ...]]:
  """The sorted dims of every parameter, whole or split along one axis over some of the mesh's axes (however the
  partitioner lays out a gradient or a gathered weight; it may also transpose them)."""
  splits = {
    math.prod(sizes) for r in range(1, len(mesh.shape) + 1) for sizes in itertools.combinations(mesh.shape.values(), r)
  }
  shapes = set()
  for value in jax.tree.leaves(params):
    shape = tuple(np.shape(value))
    shapes.add(tuple(sorted(shape)))
    for i, size in enumerate(shape):
      for split in splits:
        if size % split == 0:
          shapes.add(tuple(sorted(shape[:i] + (size // split,) + shape[i + 1 :])))
  return shapes


def traffic(hlo_text: str, mesh: jax.sharding.Mesh, axis: str, params) -> dict[str, int]:
  """Bytes per device that one run of a compiled program exchanges across mesh axis `axis`.

  `parameters`: arrays shaped like a parameter, whole or per device (gradients being reduced, weights gathered);
  `activations`: everything else. `params` may be abstract (shapes only).
  """
  shapes = parameter_shapes(params, mesh)
  totals = {"activations": 0, "parameters": 0}
  for op in read(hlo_text):
    if not crosses(op, mesh, axis):
      continue
    if op.in_loop:
      raise ValueError(f"{op.name} crosses {axis} inside a loop: its bytes per run depend on the trip count")
    scale = len(op.groups[0]) if op.kind == "reduce-scatter" and op.groups else 1
    for dtype, dims in op.shapes:
      kind = "parameters" if tuple(sorted(dims)) in shapes else "activations"
      totals[kind] += scale * _DTYPE_BYTES[dtype] * math.prod(dims)
  return totals
