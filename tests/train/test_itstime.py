"""The loop logs, evaluates and checkpoints every N steps and after the last step, never otherwise."""

import pytest

from xclip_jax.train import trainer


@pytest.mark.parametrize(
  "every, total, due",
  [
    (2, 7, [2, 4, 6, 7]),  # every second step, and the last one
    (3, 6, [3, 6]),  # the last step is also a multiple: once
    (0, 5, [5]),  # 0 turns the periodic part off
    (10, 4, [4]),  # a period longer than the run
  ],
)
def test_itstime_is_due_every_n_steps_and_at_the_end(every, total, due):
  assert [step for step in range(1, total + 1) if trainer.itstime(step, every, total)] == due
