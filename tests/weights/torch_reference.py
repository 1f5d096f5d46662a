"""PyTorch references shared by the tests of the torch checkpoint modules."""

import ml_dtypes
import numpy as np
import torch


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def assert_bitwise_equal(ours: np.ndarray, reference: np.ndarray):
  assert ours.dtype == reference.dtype
  assert ours.shape == reference.shape
  if ours.size:
    np.testing.assert_array_equal(
      ours.reshape(-1).view(np.uint8), np.ascontiguousarray(reference).reshape(-1).view(np.uint8)
    )


class _TinyBlock(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.attn = torch.nn.MultiheadAttention(8, 2)
    self.ln = torch.nn.LayerNorm(8)
    self.register_buffer("running", torch.arange(8.0))
    # A plain tensor attribute: not part of state_dict().
    self.attn_mask = torch.full((3, 3), float("-inf")).triu(1)

  def forward(self, x):
    y = self.ln(x) + self.running
    return self.attn(y, y, y, need_weights=False, attn_mask=self.attn_mask)[0]


class TinyNet(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.proj = torch.nn.Parameter(torch.randn(8, 4))
    self.blocks = torch.nn.Sequential(_TinyBlock(), _TinyBlock())
    self.head = torch.nn.Linear(4, 2, bias=False)

  def forward(self, x):
    return self.head(self.blocks(x) @ self.proj)
