"""``alignkit tiny-model``: write a tiny random model folder."""

from __future__ import annotations

from alignkit.config import TinyModelConfig
from alignkit.models.tiny import save_tiny_model


def main(cfg: TinyModelConfig):
    path = save_tiny_model(cfg.output, seed=cfg.seed, hidden_size=cfg.hidden_size,
                           num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                           intermediate_size=cfg.intermediate_size)
    print(path)
    return path
