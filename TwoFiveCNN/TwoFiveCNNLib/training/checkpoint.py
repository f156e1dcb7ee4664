"""Training state after each epoch, so an interrupted run resumes where it stopped."""

from __future__ import annotations

from pathlib import Path

from ..io.model_file import CHECKPOINT_FORMAT, load_archive, save_archive
from .config import TrainConfig
from .distributed import distributed_rank_world


class Checkpoint:
    """Training state after each epoch, written atomically beside the output model."""

    def __init__(self, path: Path, config: TrainConfig) -> None:
        self.path, self.config = path, config

    def save(self, stage: str, epoch: int, tensors: dict, history: list[dict], extra: dict | None = None) -> None:
        if distributed_rank_world()[0] != 0:
            return
        metadata = {"stage": stage, "epoch": epoch, "history": history, "config": self.config.to_dict(),
                    **(extra or {})}
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
        return tensors, metadata

    def _same_settings(self, saved: dict) -> bool:
        """Whether a checkpoint's settings are this run's; settings added since it was saved count as
        their defaults (a checkpoint from before ``allow_partial`` resumes a run without it)."""
        try:
            return type(self.config).from_dict(saved).to_dict() == self.config.to_dict()
        except (TypeError, KeyError, ValueError):
            return False

    def remove(self) -> None:
        if distributed_rank_world()[0] == 0:
            self.path.unlink(missing_ok=True)
