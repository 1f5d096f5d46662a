"""Fine-tuning: the optimiser and its parameter groups, the pure train step with Mixup/CutMix, checkpoints, the loop."""
