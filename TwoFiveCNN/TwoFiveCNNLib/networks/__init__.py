"""Networks: backbones, heads, volumetric baselines and the assembled severity model."""
