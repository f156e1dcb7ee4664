"""TwoFiveCNN core library: 2.5D CNN grading of COVID-19 pneumonia severity on chest CT.

No Qt and no Slicer application needed: the Slicer modules, the ``twofivecnn`` command line and
Python scripts all use the same functions.
"""

__version__ = "0.2.0"
