"""What every way a CT comes in (file, DICOM series, Slicer volume node) must satisfy, and the error
that says it does not: a message naming the input and the fix, printed without a traceback."""

from __future__ import annotations

import numpy as np


class VolumeError(ValueError):
    """An input that is not a readable 3D CT volume; the message names the file and the fix."""


def first_line(error: Exception) -> str:
    """The telling line of a reader's (ITK's) multi-line error, for a one-line message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "ERROR" not in line.upper() or ":" in line]
    return (useful or lines or [type(error).__name__])[-1][:300]


# Index axes whose directions' cosine exceeds this are sheared, not square: ITK's NIfTI writer would
# silently straighten such a grid, and the product of the spacings would not be a voxel's volume.
ORTHOGONALITY_TOLERANCE = 1e-3


def shear_degrees(direction: np.ndarray) -> float:
    """The largest departure from a right angle between two columns of ``direction`` (index axes), in
    degrees: 0 for any rotation, the tilt for a CT stored as its tilted gantry scanned it."""
    columns = np.asarray(direction, dtype=float)
    columns = columns / np.linalg.norm(columns, axis=0)
    cosines = np.abs(columns.T @ columns - np.eye(3))
    return float(np.degrees(np.arcsin(min(float(cosines.max()), 1.0))))


def require_orthogonal(direction: np.ndarray, source: str) -> None:
    """Refuse a sheared voxel grid: results could not map back onto it exactly (NIfTI stores square
    grids only), and its voxel volume is not the product of its spacings."""
    angle = shear_degrees(direction)
    if np.sin(np.radians(angle)) > ORTHOGONALITY_TOLERANCE:
        raise VolumeError(
            f"{source}: the voxel grid is sheared by {angle:.2f} degrees (its slices are stacked at a "
            f"slant, as a CT scanned with a tilted gantry is stored), so results could not be mapped back "
            f"onto it exactly. Resample it onto an orthogonal grid first: in 3D Slicer with Resample Scalar "
            f"Volume, or Crop Volume with interpolation; for DICOM, dcm2niix corrects the gantry tilt."
        )
