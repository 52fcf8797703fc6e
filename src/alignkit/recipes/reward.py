"""Stage 2 of RLHF: a reward model from preference pairs or rankings (``alignkit reward``).

One or several members (an ensemble: own backbones, bootstrap resamples and data orders, or
heads on a shared backbone), one head per aspect, the Bradley-Terry or Plackett-Luce loss with
per-prompt and per-annotator weights, held-out accuracy, calibration and the ensemble's spread
as an error detector, and a normalisation to mean 0 / std 1 on the reference policy's
responses. The pieces live in ``alignkit.training.reward``.
"""

from __future__ import annotations

from pathlib import Path

from alignkit.config import RewardConfig
from alignkit.data.mixture import Draw
from alignkit.data.preferences import (ANNOTATOR_WEIGHTS_FILE, annotator_weights_beside,
                                       load_preference_groups, split_groups)
from alignkit.errors import UserError
from alignkit.models.chat_templates import apply_chat_template_option
from alignkit.models.lora import count_parameters
from alignkit.models.reward import RewardModel, RewardSpec, backbone_kind
from alignkit.training.engine import Trainer, start_run, steps_for_epochs
from alignkit.utils.logs import log
from alignkit.training.reward import (bootstrap_weights, evaluate, fit_normalisation,
                                      parse_weights, print_table, resolve_reward_base,
                                      reward_step)


def check_flags(cfg: RewardConfig) -> None:
    if cfg.ensemble < 1:
        raise UserError(f"--ensemble must be >= 1, got {cfg.ensemble}")
    if not cfg.data:
        raise UserError("--data is required (preference pairs or rankings)")
    if cfg.loss == "plackett_luce" and cfg.label_smoothing:
        raise UserError("--label-smoothing applies to the Bradley-Terry loss; Plackett-Luce has "
                        "no smoothed form here (use --loss bradley_terry, or no smoothing)")
    if cfg.lora_init:
        raise UserError("--lora-init: reward members start from fresh adapters (--lora); to go "
                        "on from a reward model, pass its member folder as --model")
    if cfg.lora and cfg.shared_backbone:
        raise UserError("--lora with --shared-backbone: a shared backbone is frozen and only the "
                        "heads train; choose one")
    if cfg.lora and cfg.reinit_layers:
        raise UserError("--lora with --reinit-layers: re-drawn blocks would stay frozen at "
                        "random weights; choose one")


def annotator_weights(cfg: RewardConfig) -> dict[str, float] | None:
    """--annotator-weights, else the quality weights ``alignkit annotate export`` wrote beside
    --data, else none."""
    weights = parse_weights(cfg.annotator_weights, "annotator-weights") or None
    if weights is None:
        weights = annotator_weights_beside(cfg.data)
        if weights:
            log.info("annotator weights from %s beside --data (--annotator-weights overrides "
                     "them): %s", ANNOTATOR_WEIGHTS_FILE,
                     ", ".join(f"{k}={v:g}" for k, v in sorted(weights.items())))
    return weights


def add_adapters(model: RewardModel, cfg: RewardConfig, base: str) -> None:
    """--lora: adapters on every member's backbone, which then trains them and its head only."""
    try:
        model.add_adapters(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    except UserError as e:  # the targets name no module of this backbone
        raise UserError(f"{e} (reward backbone {base})") from None
    trainable, total = count_parameters(model)
    log.info("LoRA (r=%d) on each member: %d of %d parameters trained", cfg.lora_r, trainable,
             total)


def reward_spec(cfg: RewardConfig, base: str) -> RewardSpec:
    spec = RewardSpec(backbone=cfg.backbone, members=cfg.ensemble,
                      shared_backbone=cfg.shared_backbone, chat=cfg.chat,
                      max_length=cfg.max_length, combine=cfg.combine,
                      lam=cfg.uncertainty_penalty,
                      aspect_weights=parse_weights(cfg.aspect_weights, "aspect-weights") or None,
                      aspect_floor=parse_weights(cfg.aspect_floor, "aspect-floor") or None,
                      gate_penalty=cfg.gate_penalty)
    if spec.backbone == "auto":
        from transformers import AutoConfig
        spec.backbone = backbone_kind(AutoConfig.from_pretrained(base))
    return spec


def main(cfg: RewardConfig) -> dict:
    # 1. Flags, output folder, resolved config, seed, device.
    run = start_run(cfg, validate=lambda: check_flags(cfg))

    # 2. What the members are built on.
    base = resolve_reward_base(cfg.model)
    spec = reward_spec(cfg, base)

    # 3. Data: validate, tokenise into per-prompt groups, split by prompt.
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(base)
    if spec.backbone == "causal":
        apply_chat_template_option(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    draw = Draw.of(cfg)  # --seed, --oversample, --mixture-size; draw.report: what was drawn
    groups, skipped = load_preference_groups(
        cfg.data, tokenizer, spec.backbone, cfg.chat, cfg.max_length, cfg.skip_invalid,
        annotator_weights(cfg), draw=draw)
    if skipped:
        log.warning("skipped %d invalid record(s):\n  %s", len(skipped), "\n  ".join(skipped[:20]))
    if cfg.eval_data:
        train = groups
        heldout, _ = load_preference_groups(cfg.eval_data, tokenizer, spec.backbone, cfg.chat,
                                            cfg.max_length, cfg.skip_invalid,
                                            draw=draw.for_eval())
    else:
        train, heldout = split_groups(groups, cfg.eval_fraction, cfg.seed)
    if not train:
        raise UserError(f"{cfg.data}: no training comparisons")
    tagged = sorted({c.aspect for g in groups for c in g.pairs if c.aspect})
    spec.aspects = [a.strip() for a in cfg.aspects.split(",") if a.strip()] or tagged or ["reward"]

    # 4. Members and heads; bootstrap weights per member and prompt.
    model = RewardModel.create(base, spec, run.device, cfg.reinit_layers)
    if cfg.lora:
        add_adapters(model, cfg, base)
    model.train()
    boot = bootstrap_weights(len(train), cfg.ensemble, cfg.seed, cfg.bootstrap)

    # 5. The loop: optimiser, schedule, resume (weights, optimiser, RNG, data position).
    trainer = Trainer(run, model, steps_for_epochs(cfg, len(train)), name="reward",
                      counter="pairs",
                      idle_parameters=cfg.ensemble > 1 and not cfg.shared_backbone,
                      sources=[g.where for g in train])
    trainer.resume()
    trainer.log_setup({"train_prompts": len(train), "heldout_prompts": len(heldout),
                       "train_pairs": sum(len(g.pairs) for g in train),
                       "heldout_pairs": sum(len(g.pairs) for g in heldout),
                       "members": cfg.ensemble, "aspects": ",".join(spec.aspects),
                       "backbone": spec.backbone, "skipped_records": len(skipped),
                       **draw.report})

    # 6. Train: whole prompt groups per micro-batch; every member's loss in one backward.
    #    Held-out metrics every --eval-every steps (the final ones follow the normalisation).
    def evaluate_during(step: int) -> dict:
        if not heldout or step in (0, trainer.total_steps):
            return {}
        return evaluate(model, heldout, spec.aspects, cfg, run.device)

    trainer.fit(lambda step: reward_step(model, trainer, train, boot, spec.aspects, cfg, step),
                evaluate_during, progress=lambda row: {"loss": f"{row['loss']:.3f}",
                                                       "pairs_s": f"{row['pairs_per_s']:.1f}"})

    # 7. Normalise on the reference policy's responses, evaluate, save (the full weights, by
    #    the first process).
    with trainer.unsharded():
        fit_normalisation(model, train, cfg, run.device)
        result = evaluate(model, heldout, spec.aspects, cfg, run.device) if heldout else {}
    if result:
        trainer.log(trainer.total_steps, result, split="eval")
    trainer.finish()
    final = Path(run.output) / "final"
    plain = trainer.full_model()
    if run.is_main:
        plain.save(final, data=str(cfg.data), heldout=result)
        if result:
            print_table({"held-out": result})
        log.info("saved %s", final)
    return {"final": final, "model": model, "eval": result}
