"""Report pictures drawn with PIL only, so Slicer's Python draws them too.

Imports point one way: ``colours`` (every colour, the lesion map's colour table) <- ``plotting`` (text,
ticks, axes, atomic PNG writes) <- ``figures`` (confusion matrix, curves, accuracy vs size) and
``montage`` (the lesion map montage).
"""
