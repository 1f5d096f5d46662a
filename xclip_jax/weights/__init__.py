"""Checkpoints: every format read into (XCLIPConfig, parameters) and written back, without running pickled code."""
