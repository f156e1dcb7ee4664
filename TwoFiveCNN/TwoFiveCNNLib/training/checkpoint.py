"""Training state after each epoch, so an interrupted run resumes where it stopped."""

from __future__ import annotations

from pathlib import Path

from ..io.model_file import CHECKPOINT_FORMAT, load_archive, save_archive
from .config import TrainConfig
from .distributed import distributed_rank_world

# What a run trains on, as a checkpoint records it: resuming on other data would mix two runs in one model.
DATA_KEYS = {"dataset_fingerprint": "the dataset (its studies, labels and files)",
             "split_fingerprint": "the split",
             "content_fingerprint": "the studies' files (their bytes)",
             "train_only_fingerprint": "the --train-only studies"}


class Checkpoint:
    """Training state after each epoch, written atomically beside the output model.

    ``data`` identifies what the run trains on (the fingerprints of :data:`DATA_KEYS`); a checkpoint
    made on other data is refused, as one made with other settings is.
    """

    def __init__(self, path: Path, config: TrainConfig, data: dict[str, str | None] | None = None) -> None:
        self.path, self.config, self.data = path, config, data

    def save(self, stage: str, epoch: int, tensors: dict, history: list[dict], extra: dict | None = None) -> None:
        if distributed_rank_world()[0] != 0:
            return
        metadata = {"stage": stage, "epoch": epoch, "history": history, "config": self.config.to_dict(),
                    **({"data": self.data} if self.data is not None else {}), **(extra or {})}
        save_archive(self.path, CHECKPOINT_FORMAT, tensors, metadata)

    def load(self) -> tuple[dict, dict] | None:
        if not self.path.exists():
            return None
        tensors, metadata = load_archive(self.path, CHECKPOINT_FORMAT)
        if not self._same_settings(metadata["config"]):
            raise ValueError(
                f"{self.path}: this checkpoint was made with other settings; resume with the same command "
                f"line, or delete the checkpoint to start afresh."
            )
        self._check_same_data(metadata.get("data"))
        return tensors, metadata

    def _check_same_data(self, saved: object) -> None:
        """Refuse a checkpoint of a run on other data (or one that does not say which data it was)."""
        if self.data is None:
            return
        fix = (f"Resume with the data and split it was made on, or start afresh: delete {self.path} or "
               f"run without --resume (which replaces it).")
        if not isinstance(saved, dict):  # the user's to fix, as the rest: ValueError, printed by the CLI
            raise ValueError(  # noqa: TRY004
                f"{self.path}: this checkpoint does not record the dataset it was made on (an earlier "
                f"version wrote it), so resuming could mix two datasets in one model. {fix}")
        changed = [what for key, what in DATA_KEYS.items() if saved.get(key) != self.data.get(key)]
        if changed:
            raise ValueError(f"{self.path}: this checkpoint was made on other data: {', '.join(changed)} "
                             f"differ from this run's. {fix}")

    def _same_settings(self, saved: dict) -> bool:
        """Whether a checkpoint's settings are this run's; settings added since it was saved count as
        their defaults (a checkpoint from before ``allow_partial`` resumes a run without it)."""
        try:
            return type(self.config).from_dict(saved).to_dict() == self.config.to_dict()
        except (TypeError, KeyError, ValueError):
            return False
