"""The transfer protocol: train on the source domains, evaluate on the targets as is, adapt
on k-shot episodes of each target with every adaptation arm, train from scratch on the same
episodes, and measure what the source forgot.

``plan`` holds the typed ``TransferPlan`` (splits, episodes, seed, metric, output folder),
``stages`` the stage objects, ``protocol`` the order they run in, ``report`` what comes
back. Adaptation arms live in ``multimodal.experiments.adaptations``.
"""

from ..adaptations import create_adaptation, list_adaptations, register_adaptation
from ..adaptations.finetune import ADAPT_DEFAULTS
from ..adaptations.unsupervised import UDA_DEFAULTS
from .plan import Episode, TransferPlan, draw_episode, episode_seed, source_and_targets
from .protocol import transfer, transfer_adaptations, transfer_seeds, transfer_strategies
from .report import EpisodeResult, TargetResult, TransferReport
from .stages import SCRATCH_DEFAULTS, AdaptStage, ScratchStage, SourceStage, ZeroShotStage

__all__ = [
    "ADAPT_DEFAULTS",
    "SCRATCH_DEFAULTS",
    "UDA_DEFAULTS",
    "AdaptStage",
    "Episode",
    "EpisodeResult",
    "ScratchStage",
    "SourceStage",
    "TargetResult",
    "TransferPlan",
    "TransferReport",
    "ZeroShotStage",
    "create_adaptation",
    "draw_episode",
    "episode_seed",
    "list_adaptations",
    "register_adaptation",
    "source_and_targets",
    "transfer",
    "transfer_adaptations",
    "transfer_seeds",
    "transfer_strategies",
]
