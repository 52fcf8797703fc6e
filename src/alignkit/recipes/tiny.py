"""``alignkit tiny-model``: write a tiny random model folder."""

from __future__ import annotations

from alignkit.config import TinyModelConfig
from alignkit.errors import UserError
from alignkit.models.tiny import save_tiny_model


def main(cfg: TinyModelConfig):
    # 1. Shapes the architecture can take. The attention heads split the hidden size evenly,
    #    and rotary embeddings rotate pairs of dimensions, so each head needs an even width.
    if cfg.hidden_size % cfg.num_heads or (cfg.hidden_size // cfg.num_heads) % 2:
        raise UserError(f"--hidden-size {cfg.hidden_size} must be --num-heads {cfg.num_heads} "
                        "times an even head width (e.g. --hidden-size 64 --num-heads 4)")
    # the model has num_heads // 2 key/value heads (at least 1), each shared by as many query
    # heads, so they must divide the query heads
    if cfg.num_heads % max(1, cfg.num_heads // 2):
        raise UserError(f"--num-heads {cfg.num_heads}: must be 1, 3 or even (the key/value heads, "
                        "half as many, must divide it)")
    # 2. The model and tokenizer folder.
    path = save_tiny_model(cfg.output, seed=cfg.seed, hidden_size=cfg.hidden_size,
                           num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                           intermediate_size=cfg.intermediate_size)
    print(path)
    return path
