"""The training engine on Accelerate: ``fit`` and its parts (state, loaders, objective,
step, best-weights tracking, checkpoints, run records) and ``evaluate``."""

from .checkpoint import checkpoints
from .config import FitData, FitResult, TrainConfig
from .evaluate import eval_batches, evaluate, predict, predict_loader
from .optim import build_optimizer
from .state import TrainState
from .step import NonFiniteTrainingError
from .training import fit

__all__ = [
    "FitData",
    "FitResult",
    "NonFiniteTrainingError",
    "TrainConfig",
    "TrainState",
    "build_optimizer",
    "checkpoints",
    "evaluate",
    "fit",
    "eval_batches",
    "predict",
    "predict_loader",
]
