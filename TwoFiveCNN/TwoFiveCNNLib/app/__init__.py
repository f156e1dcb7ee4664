"""Applications: the command line, the demo, background processes."""

import os
import sys

# The command line runs its own threads (two slabs resampled at once, the next study read ahead, the
# previous one written, the networks' own threads): NumPy's BLAS threads on top of them oversubscribe
# the cores and spin, costing about a tenth of a study's time in a batch. So its few small matrix
# products run on one thread, unless the user chose otherwise. Only before NumPy is first imported
# does this take effect (in Slicer NumPy is loaded long before, and nothing changes).
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
