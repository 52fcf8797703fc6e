"""Judges: scorers that stand in for, or imitate, human preference (gold scorers, AI judges)."""

from alignkit.judges.gold import GoldConfig, GoldScorer

__all__ = ["GoldConfig", "GoldScorer"]
