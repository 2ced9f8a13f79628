"""Training loop, checkpoints and learning-curve plots."""
from .averaging import EMA, PolyakAverage
from .checkpoint import load_checkpoint, save_checkpoint
from .ensemble import SnapshotEnsemble, ensemble_predict, restart_boundaries
from .interrupt import TrainingInterrupted
from .trainer import History, Trainer, TrainingDiverged

__all__ = ["Trainer", "History", "TrainingDiverged", "TrainingInterrupted", "save_checkpoint", "load_checkpoint",
           "EMA", "PolyakAverage", "SnapshotEnsemble", "ensemble_predict", "restart_boundaries"]
