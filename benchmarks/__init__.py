"""Kernel, model and service benchmarks; results go to benchmarks/results/."""
