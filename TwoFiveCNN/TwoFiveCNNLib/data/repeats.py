"""One image, one study: refuse a dataset (or datasets used together) that lists one image under two ids.

Three ways one image comes twice, from cheapest to find: one file listed twice (``DatasetIndex``
itself refuses it), a copy of the file (same bytes), and the same voxels in another file (another
format, compression or orientation). Copies are found before any study is read: only files of equal
size are hashed, so a big folder costs a directory listing. The voxels are compared from the hashes
the preprocessed cache records while it reads the studies anyway.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from .cache import PreprocessedCache
from .index import Study, refuse_repeated, same_file, study_size


def refuse_copied_files(studies: Sequence[Study], cache: PreprocessedCache) -> None:
    """Refuse one file listed twice, or two studies whose files hold the same bytes (reads only studies
    that share a size)."""
    refuse_repeated(studies, same_file, "is also listed as")
    sizes = {study.path: study_size(study.path) for study in studies}
    shared = {size for size, count in Counter(sizes.values()).items() if count > 1}
    refuse_repeated(studies, lambda study: cache.content_hash(study.path) if sizes[study.path] in shared else None,
                    "is a byte-for-byte copy of")


def refuse_repeated_images(studies: Sequence[Study], cache: PreprocessedCache,
                           progress: Callable[[int, int], None] | None = None) -> None:
    """Refuse two studies with the same voxels. Studies the cache has no voxel hash for are read."""
    hashes = {}
    for done, study in enumerate(studies, start=1):
        hashes[study.path] = cache.image_hash(study.path)
        if progress is not None:
            progress(done, len(studies))
    refuse_repeated(studies, lambda study: hashes[study.path], "holds the same image (voxel data) as")
