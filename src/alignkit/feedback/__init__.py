"""Human feedback: simulated annotators (``simulated``), and the annotation app: ``store``
(SQLAlchemy + Alembic), ``app`` (FastAPI), ``agreement`` and ``quality`` (alpha, kappa, gold,
disputes), ``active`` (reward-ensemble uncertainty), ``tasks`` and ``export``. Only the simulated
panel is imported here; the app's modules need the ``web`` extra and are imported on use."""

from alignkit.feedback.simulated import (DEFAULT_ANNOTATORS, Annotator, PanelConfig,
                                         SimulatedPanel, agreement_report, bayes_optimal_accuracy,
                                         gold_agreement)

__all__ = ["Annotator", "PanelConfig", "SimulatedPanel", "DEFAULT_ANNOTATORS",
           "bayes_optimal_accuracy", "gold_agreement", "agreement_report"]
