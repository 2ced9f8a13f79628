"""Training loop, checkpoints and learning-curve plots."""
from .checkpoint import load_checkpoint, save_checkpoint
from .trainer import History, Trainer, TrainingDiverged

__all__ = ["Trainer", "History", "TrainingDiverged", "save_checkpoint", "load_checkpoint"]
