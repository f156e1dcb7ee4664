"""Pictures: colours, figures and the evidence montage (PIL only, so Slicer's Python draws them too)."""
