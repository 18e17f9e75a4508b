"""Command-line applications: the `robot-env` CLI, teleop, demo and benchmarks."""
