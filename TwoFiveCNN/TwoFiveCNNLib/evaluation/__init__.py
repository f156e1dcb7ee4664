"""Evaluation: scoring a model on a dataset, the accuracy study, the benchmarks."""
