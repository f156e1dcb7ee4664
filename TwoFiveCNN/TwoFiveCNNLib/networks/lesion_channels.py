"""The lesion network's output channels, apart from the network so that reading its output (ONNX
Runtime included) needs no torch."""

LUNGS, LESIONS = 0, 1  # the lesion-inclusive lungs, and the lesions
