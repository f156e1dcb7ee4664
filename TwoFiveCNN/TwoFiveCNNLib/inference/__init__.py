"""Inference: grading a study, the prediction record and its files."""
