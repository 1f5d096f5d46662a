"""One format for everything decided per parameter: which train, their learning-rate multiplier, their weight decay
and their placement on the mesh.

Rules are ordered `(pattern, value)` pairs over '/'-joined Flax parameter names
(`visual/transformer/resblocks_0/message_fc/weight`, `logit_scale`). A pattern must match the whole name
(re.fullmatch) and the first matching rule wins, as big_vision's `make_mask_trees`; a name that no rule matches is an
error, as in big_vision's `_split_frozen`, so a list that means a default ends with an explicit `(".*", default)`.
"""

from collections.abc import Iterable, Sequence
import logging
import re
from typing import Any

Rules = Sequence[tuple[str, Any]]

# How many names the log and the error show per group.
EXAMPLES = 2


def match(rules: Rules, names: Iterable[str], *, log: str | None = None) -> dict[str, Any]:
  """{name: value of the first rule whose pattern matches all of it} for every name.

  With `log` (a label such as "weight decay"), logs at INFO which pattern caught how many parameters, with a few
  examples; a rule that catches nothing shows as 0, so dead rules are visible. Raises ValueError naming the first
  parameters that no rule covers.
  """
  compiled = [re.compile(pattern) for pattern, _ in rules]
  caught = [[] for _ in rules]
  values, uncovered = {}, []
  for name in names:
    index = next((i for i, pattern in enumerate(compiled) if pattern.fullmatch(name)), None)
    if index is None:
      uncovered.append(name)
    else:
      caught[index].append(name)
      values[name] = rules[index][1]
  label = f"{log}: " if log else ""
  if uncovered:
    raise ValueError(
      f"{label}no rule covers {len(uncovered)} parameters, e.g. {', '.join(uncovered[:EXAMPLES])} (rules: "
      f"{[pattern for pattern, _ in rules]}; end the list with an explicit ('.*', default) where a default is meant)"
    )
  if log:
    lines = [
      f"  {pattern} -> {value}: {len(group)}{_examples(group)}" for (pattern, value), group in zip(rules, caught)
    ]
    logging.info("%srules over %d parameters, first match wins\n%s", label, len(values), "\n".join(lines))
  return values


def _examples(names: list[str]) -> str:
  if not names:
    return ""
  more = ", ..." if len(names) > EXAMPLES else ""
  return f" ({', '.join(names[:EXAMPLES])}{more})"
