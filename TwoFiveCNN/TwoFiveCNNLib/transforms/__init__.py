"""Array transforms, in NumPy: the HU window, body crop and resampling to the model grid; lung
segmentation; the lung involvement in HU bands."""
