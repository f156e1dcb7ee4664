"""Array transforms: HU windowing and the model grid, lungs and aeration."""
