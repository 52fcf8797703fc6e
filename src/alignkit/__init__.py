"""alignkit: align language models with human preferences.

Importing the package is cheap: heavy modules (torch, transformers) load only when a stage runs.
"""

__version__ = "0.1.0"
