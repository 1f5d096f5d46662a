"""Parallelism: the device mesh and sharding rules, multi-process start-up, the collectives of a compiled program."""
