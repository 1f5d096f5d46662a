"""Helpers shared by the config files."""


def parse_arg(arg: str | None, **defaults):
  """Parses a config argument `key=value,key=value` over typed defaults (as in `configs/model.py:arch=ViT-B/16`).

  Values take the type of their default; a key without a default, or a value of the wrong type, is an error.
  """
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"config argument {item!r} is not key=value (in {arg!r})")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} (in {arg!r}); known: {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={value!r} is not a boolean")
      values[key] = value.lower() in ("true", "1")
    else:
      try:
        values[key] = kind(value)
      except ValueError as error:
        raise ValueError(f"config argument {key}={value!r} is not of type {kind.__name__}") from error
  return values
