"""Human feedback: simulated annotators (and, later, the annotation app, store and metrics)."""

from alignkit.feedback.simulated import (DEFAULT_ANNOTATORS, Annotator, PanelConfig,
                                         SimulatedPanel, agreement_report, bayes_optimal_accuracy,
                                         gold_agreement)

__all__ = ["Annotator", "PanelConfig", "SimulatedPanel", "DEFAULT_ANNOTATORS",
           "bayes_optimal_accuracy", "gold_agreement", "agreement_report"]
