"""Training: configuration, the fit loop, both stages and the baselines."""
