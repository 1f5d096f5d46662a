"""Checkpoints: every format read into (XCLIPConfig, parameters) and written back, without running pickled code.

Every format is first read into an official state dict (`official` maps it to Flax parameters and back):
  - PyTorch files: `torch_pickle` (torch.save files, restricted unpickler), `torchscript` (OpenAI's CLIP archives),
    `torch_checkpoint` (which entry of a file is the model), `torch_writer` (export back to torch.save);
  - Hugging Face directories: `hf_directory` (config.json and weights), `hf_mapping` (names, layouts and config
    sections shared by the CLIP family), `hf_clip` and `hf_xclip` (each model's config reading and name table);
  - xclip-jax's own converted checkpoints and training workdirs: `native`.
"""
