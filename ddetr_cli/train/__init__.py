"""Training: matching, losses, optimiser, the loop (AMP, DDP, resume)."""

from ddetr_cli.train.criterion import SetCriterion, build_criterion
from ddetr_cli.train.matcher import HungarianMatcher, build_matcher

__all__ = ["HungarianMatcher", "SetCriterion", "build_criterion", "build_matcher"]
