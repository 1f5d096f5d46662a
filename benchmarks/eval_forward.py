"""The evaluation-forward benchmark behind `python -m benchmarks.model --mode=eval` (its docstring says what the JSON
holds) and `benchmarks.device_check`."""

import functools
import logging
import pathlib
import time

import jax
import numpy as np

from benchmarks import official_code as official_code_lib
from benchmarks import throughput
from xclip_jax import pretrained
from xclip_jax.model import xclip
from xclip_jax.weights import official


def _median_of_alternating(calls: dict, repeats: int) -> dict:
  for call in calls.values():  # warm-up
    for _ in range(3):
      call()
  times = {name: [] for name in calls}
  for _ in range(repeats):  # alternate so that all see the same machine load
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def eval_benchmark(
  arch: str,
  frames: int,
  batch: int | str,
  classes: int,
  dtype: str,
  repeats: int,
  official_code: str | None = None,
  remat: bool = False,
  max_batch: int | None = None,
  attention: str = "auto",
) -> dict:
  config = throughput.architecture(arch, num_frames=frames, dtype=dtype, remat=remat, attention=attention)
  model = pretrained.XCLIPModel(config, throughput.random_params(config))
  rng = np.random.default_rng(0)
  text_ids = rng.integers(1, config.vocab_size - 2, (classes, config.context_length), dtype=np.int32)
  text_ids[:, -1] = config.vocab_size - 1  # an end-of-text token for the argmax pooling
  text_features = jax.block_until_ready(model.encode_text(text_ids))
  size = config.image_resolution
  variables = {"params": model.params}
  forward = jax.jit(functools.partial(model.module.apply, method=xclip.XCLIP.logits_from_features))
  video_aval = lambda clips: jax.ShapeDtypeStruct((clips, frames, size, size, 3), np.float32)
  # On the device beforehand, as an input pipeline that prefetches would have it.
  videos = functools.cache(lambda clips: throughput.filled([video_aval(clips)], seed=3)[0])
  compiled, compile_s, first_call_s = {}, {}, {}

  def run(clips):
    start = time.perf_counter()
    compiled[clips] = forward.lower(variables, video_aval(clips), text_features).compile()
    compile_s[clips] = time.perf_counter() - start
    jax.block_until_ready(compiled[clips](variables, videos(clips), text_features))
    first_call_s[clips] = time.perf_counter() - start

  result = dict(mode="eval", arch=arch, frames=frames, classes=classes, dtype=dtype, remat=remat, attention=attention)
  result["device_kind"] = jax.devices()[0].device_kind
  if batch == "auto":
    resident = sum(x.nbytes for x in jax.tree.leaves((variables, text_features)))
    batch, search = throughput.largest_batch(
      lambda clips: throughput.needed_bytes(
        forward.lower(variables, video_aval(clips), text_features).compile(throughput.ANALYSIS_ONLY)
      ),
      run,
      throughput.free_memory_bytes() + resident,
      max_batch,
    )
    result["batch_search"] = search
  else:
    run(batch)
  video = videos(batch)
  ours = lambda: jax.block_until_ready(compiled[batch](variables, video, text_features))
  calls = {"ours": ours}

  if official_code:
    import torch  # pylint: disable=g-import-not-at-top

    build_model = official_code_lib.import_build_model(pathlib.Path(official_code).absolute())
    state_dict = {k: torch.from_numpy(np.array(v)) for k, v in official.official_from_params(model.params).items()}
    official_model = build_model(
      state_dict,
      T=frames,
      prompts_alpha=config.prompts_alpha,
      prompts_layers=config.prompts_layers,
      mit_layers=config.mit_layers,
      logger=logging.getLogger("official"),
    )
    torch_video = torch.from_numpy(np.asarray(video).transpose(0, 1, 4, 2, 3).copy())  # (B, T, 3, H, W)
    torch_ids = torch.from_numpy(text_ids.astype(np.int64))

    def official_forward():
      with torch.no_grad():
        return official_model(torch_video, torch_ids)

    official_logits = official_forward().numpy()
    calls["official"] = official_forward
    result["official_torch_threads"] = torch.get_num_threads()
    result["max_abs_logit_difference"] = float(np.abs(official_logits - np.asarray(ours())).max())

  medians = _median_of_alternating(calls, repeats)
  census = throughput.matmuls(forward, variables, video_aval(batch), text_features)
  model_flops = throughput.census_flops(census) / batch
  peak, peak_source = throughput.peak_flops(dtype)
  result.update(
    batch=batch,
    repeats=repeats,
    step_s=medians["ours"],
    clips_per_s=batch / medians["ours"],
    compile_s=compile_s[batch],
    first_call_s=first_call_s[batch],
    model_flops_per_clip=model_flops,
    matmul_gflop=model_flops * batch / 1e9,
    xla_flops_per_clip=throughput.xla_flops(compiled[batch]) / batch,
    peak_flops_per_s=peak,
    peak_source=peak_source,
    mfu=None if peak is None else model_flops * batch / medians["ours"] / peak,
    matmul_only_s=throughput.matmul_only_seconds(census, repeats, throughput.free_memory_bytes() // 4),
    xla_memory_bytes=throughput.needed_bytes(compiled[batch]),
    peak_device_memory_bytes=throughput.peak_memory_bytes(),
  )
  if official_code:
    result.update(official_step_s=medians["official"], ratio_to_official=medians["ours"] / medians["official"])
  return result
