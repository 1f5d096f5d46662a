"""Evaluation: multi-view accuracy, zero-shot protocols, the run report and its pictures."""
