"""Reward models: a scalar (or per-aspect) head on a backbone, ensembles of them, the folder
format they save to and reload from with one call, and ``RewardFunction``: a saved model as the
reward a policy is trained, selected or judged by (PPO, online DPO, best-of-n, reward judges).

Backbones:
- ``encoder`` (BERT-like, e.g. the packaged all-MiniLM-L6-v2): the (prompt, response) text pair,
  mean-pooled final hidden states (as the sentence encoder was trained), then the head;
- ``causal`` (any causal LM, e.g. the SFT model): the chat-rendered conversation, the final hidden
  state of the last non-padding token, then the head (InstructGPT; Ziegler et al. 2019).

Folder layout (``RewardModel.save``/``load``)::

    reward_config.json      backbone kind, aspects, members, normalisation, combination rules
    member-0/ ... member-(M-1)/   a Hugging Face backbone folder + head.safetensors each
    (shared backbone: backbone/ + heads.safetensors holding every member's head)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from alignkit.errors import UserError

ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "deberta", "deberta-v2", "distilbert",
                 "electra", "mpnet", "albert", "modernbert")


@dataclass
class RewardSpec:
    """Everything needed to rebuild and apply a saved reward model (``reward_config.json``)."""

    backbone: str = "encoder"  # encoder | causal
    aspects: list[str] = field(default_factory=lambda: ["reward"])
    members: int = 1
    shared_backbone: bool = False
    chat: str = "auto"
    max_length: int = 512
    # normalisation: reward = (raw - offset) / scale, per member and aspect
    offset: list[list[float]] = field(default_factory=list)
    scale: list[list[float]] = field(default_factory=list)
    # how scores combine (configuration, not code)
    combine: str = "mean"  # mean | min | mean_minus_std | mean_minus_var
    lam: float = 1.0
    aspect_weights: dict[str, float] | None = None
    aspect_floor: dict[str, float] | None = None
    gate_penalty: float = 1.0
    base_model: str = ""


def backbone_kind(config) -> str:
    return "encoder" if getattr(config, "model_type", "") in ENCODER_TYPES else "causal"


def load_backbone(path: str, device: str = "cpu"):
    """The transformer body without its LM head (``AutoModel``) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    from alignkit.models.loading import quiet_transformers

    quiet_transformers()
    try:
        model = AutoModel.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(f"{path}: cannot load a reward-model backbone ({str(e).splitlines()[0]})") \
            from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    # no dropout: a reward is a deterministic function of the text, and the Bradley-Terry
    # difference of two noisy forward passes is noise (TRL's RewardTrainer does the same)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.to(device), tok


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, last_index: torch.Tensor,
         kind: str) -> torch.Tensor:
    """(N, L, H) -> (N, H): mean over real tokens (encoder) or the last real token (causal)."""
    if kind == "encoder":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]


def pool_packed(hidden: torch.Tensor, token_response: torch.Tensor, last_index: torch.Tensor,
                kind: str) -> torch.Tensor:
    """(Rows, L, H) hidden states of a packed batch -> (N, H) per response: the mean over the
    response's own tokens (encoder) or its last token (causal; ``last_index`` is flat)."""
    flat = hidden.flatten(0, 1)
    if kind != "encoder":
        return flat[last_index]
    owner = token_response.flatten()
    keep = owner >= 0
    n = last_index.numel()
    sums = flat.new_zeros((n, flat.shape[-1])).index_add(0, owner[keep], flat[keep])
    counts = torch.bincount(owner[keep], minlength=n).clamp(min=1).to(flat.dtype)
    return sums / counts[:, None]


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of a backbone: its longest ``nn.ModuleList``."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no stack of transformer blocks found")
    return max(lists, key=len)


def reinitialise_top_blocks(model: nn.Module, n: int) -> None:
    """Draw fresh weights (the model's own initialiser, current torch seed) for the top ``n``
    transformer blocks."""
    blocks = transformer_blocks(model)
    if n > len(blocks):
        raise ValueError(f"the backbone has only {len(blocks)} blocks")
    for block in list(blocks)[-n:]:
        for module in block.modules():
            # weights loaded by from_pretrained are flagged as initialised, and transformers'
            # initialisers then leave them alone: clear the flags first
            for tensor in (module, *module.parameters(recurse=False)):
                if getattr(tensor, "_is_hf_initialized", False):
                    tensor._is_hf_initialized = False
            if hasattr(model, "_init_weights"):
                model._init_weights(module)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()


class RewardMember(nn.Module):
    """One backbone with a linear head per aspect: forward -> (N, A) raw rewards."""

    def __init__(self, backbone: nn.Module, kind: str, num_aspects: int):
        super().__init__()
        self.backbone = backbone
        self.kind = kind
        self.head = nn.Linear(backbone.config.hidden_size, num_aspects)
        nn.init.normal_(self.head.weight, std=1.0 / (backbone.config.hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    def features(self, batch) -> torch.Tensor:
        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.token_type_ids is not None and self.kind == "encoder":
            kwargs["token_type_ids"] = batch.token_type_ids
        if self.kind == "causal":
            kwargs["use_cache"] = False  # training and scoring never decode
        packed = getattr(batch, "position_ids", None) is not None
        if packed:
            kwargs["position_ids"] = batch.position_ids
        out = self.backbone(**kwargs)
        if packed:
            return pool_packed(out.last_hidden_state, batch.token_response, batch.last_index,
                               self.kind)
        return pool(out.last_hidden_state, batch.attention_mask, batch.last_index, self.kind)

    def forward(self, batch) -> torch.Tensor:
        return self.head(self.features(batch)).float()


@dataclass
class RewardScores:
    """Scores of B (prompt, response) pairs by an ensemble of M members over A aspects.

    members: (M, B, A) normalised rewards. aspect_mean, aspect_std: (B, A) over members.
    per_member: (M, B) each member's aspects combined. combined: (B,) the reward to optimise
    (members combined by the spec's rule); mean, std: (B,) over members of ``per_member``."""

    aspects: list[str]
    members: torch.Tensor
    aspect_mean: torch.Tensor
    aspect_std: torch.Tensor
    per_member: torch.Tensor
    combined: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def records(self) -> list[dict]:
        rows = []
        for b in range(self.combined.shape[0]):
            row = {"reward": float(self.combined[b]), "reward_mean": float(self.mean[b]),
                   "reward_std": float(self.std[b]),
                   "members": [float(x) for x in self.per_member[:, b]]}
            if len(self.aspects) > 1:
                row["aspects"] = {a: float(self.aspect_mean[b, i])
                                  for i, a in enumerate(self.aspects)}
                row["aspects_std"] = {a: float(self.aspect_std[b, i])
                                      for i, a in enumerate(self.aspects)}
            rows.append(row)
        return rows


class RewardModel(nn.Module):
    """An ensemble of ``RewardMember``s (M >= 1) with normalisation and combination rules."""

    def __init__(self, spec: RewardSpec, members: list[RewardMember], tokenizer):
        super().__init__()
        self.spec = spec
        self.members = nn.ModuleList(members)
        self.tokenizer = tokenizer

    # ---------------------------------------------------------------- build / save / load
    @classmethod
    def create(cls, base: str, spec: RewardSpec, device: str = "cpu",
               reinit_layers: int = 0) -> "RewardModel":
        """Fresh members on the backbone at ``base`` (a local folder). ``reinit_layers``: each
        member (with its own backbone) draws its own random weights for the top N transformer
        blocks, so members differ in function and not only in head and data (a stand-in for
        the independently pretrained members of Coste et al. 2023)."""
        backbone, tok = load_backbone(base, device)
        spec.backbone = spec.backbone if spec.backbone != "auto" else backbone_kind(backbone.config)
        members = []
        for m in range(spec.members):
            if spec.shared_backbone:
                body = backbone
                if m == 0:
                    body.requires_grad_(False)
            else:
                body = backbone if m == 0 else load_backbone(base, device)[0]
            torch.manual_seed(10_007 * (m + 1))
            if reinit_layers > 0 and not spec.shared_backbone:
                try:
                    reinitialise_top_blocks(body, reinit_layers)
                except ValueError as e:
                    raise UserError(f"--reinit-layers {reinit_layers}: {e}") from None
            members.append(RewardMember(body, spec.backbone, len(spec.aspects)).to(device))
        spec.offset = [[0.0] * len(spec.aspects) for _ in range(spec.members)]
        spec.scale = [[1.0] * len(spec.aspects) for _ in range(spec.members)]
        spec.base_model = base
        return cls(spec, members, tok)

    def save(self, path: str | Path) -> Path:
        """Write the folder atomically (a temporary folder renamed into place)."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "reward_config.json").write_text(json.dumps(asdict(self.spec), indent=1))
        if self.spec.shared_backbone:
            self.members[0].backbone.save_pretrained(str(tmp / "backbone"))
            self.tokenizer.save_pretrained(str(tmp / "backbone"))
            heads = {}
            for m, member in enumerate(self.members):
                heads[f"{m}.weight"] = member.head.weight.detach().cpu().contiguous()
                heads[f"{m}.bias"] = member.head.bias.detach().cpu().contiguous()
            save_file(heads, str(tmp / "heads.safetensors"))
        else:
            for m, member in enumerate(self.members):
                d = tmp / f"member-{m}"
                member.backbone.save_pretrained(str(d))
                self.tokenizer.save_pretrained(str(d))
                save_file({"weight": member.head.weight.detach().cpu().contiguous(),
                           "bias": member.head.bias.detach().cpu().contiguous()},
                          str(d / "head.safetensors"))
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "RewardModel":
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file = path / "reward_config.json"
        if not cfg_file.is_file():
            raise UserError(f"{path}: not a reward model folder (no reward_config.json)")
        spec = RewardSpec(**json.loads(cfg_file.read_text()))
        members = []
        if spec.shared_backbone:
            body, tok = load_backbone(str(path / "backbone"), device)
            heads = load_file(str(path / "heads.safetensors"))
            for m in range(spec.members):
                member = RewardMember(body, spec.backbone, len(spec.aspects))
                member.head.load_state_dict({"weight": heads[f"{m}.weight"],
                                             "bias": heads[f"{m}.bias"]})
                members.append(member.to(device))
        else:
            tok = None
            for m in range(spec.members):
                body, tok_m = load_backbone(str(path / f"member-{m}"), device)
                tok = tok or tok_m
                member = RewardMember(body, spec.backbone, len(spec.aspects))
                member.head.load_state_dict(load_file(str(path / f"member-{m}" /
                                                          "head.safetensors")))
                members.append(member.to(device))
        model = cls(spec, members, tok)
        model.eval()
        return model

    # ---------------------------------------------------------------- scoring
    def raw(self, batch) -> torch.Tensor:
        """(M, N, A) un-normalised rewards of the batch's N responses. A shared backbone runs once."""
        if self.spec.shared_backbone:
            feats = self.members[0].features(batch)
            return torch.stack([m.head(feats).float() for m in self.members])
        return torch.stack([m(batch) for m in self.members])

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        offset = torch.tensor(self.spec.offset, dtype=raw.dtype, device=raw.device)[:, None, :]
        scale = torch.tensor(self.spec.scale, dtype=raw.dtype, device=raw.device)[:, None, :]
        return (raw - offset) / scale

    def set_normalisation(self, raw: torch.Tensor) -> None:
        """Offset and scale of every member and aspect so that these (M, N, A) raw rewards score
        mean 0, std 1."""
        self.spec.offset = raw.mean(1).tolist()
        self.spec.scale = raw.std(1, unbiased=False).clamp(min=1e-6).tolist()

    def denormalise(self, members: torch.Tensor) -> torch.Tensor:
        """(M, N, A) normalised rewards -> the raw head outputs they came from (the scale each
        member's Bradley-Terry loss was trained on)."""
        offset = torch.tensor(self.spec.offset, dtype=members.dtype, device=members.device)
        scale = torch.tensor(self.spec.scale, dtype=members.dtype, device=members.device)
        return members * scale[:, None, :] + offset[:, None, :]

    def combine(self, members: torch.Tensor) -> RewardScores:
        from alignkit.losses.reward import combine_aspects, combine_ensemble

        spec = self.spec
        if len(spec.aspects) == 1:
            per_member = members[..., 0]
        else:
            weights = spec.aspect_weights or {a: 1.0 / len(spec.aspects) for a in spec.aspects}
            try:
                per_member = torch.stack([
                    combine_aspects({a: members[m, :, i] for i, a in enumerate(spec.aspects)},
                                    weights, spec.aspect_floor, spec.gate_penalty)
                    for m in range(members.shape[0])])
            except ValueError as e:  # rules the user set when training the model
                raise UserError(f"{e} (alignkit reward --aspect-weights / --aspect-floor / "
                                "--gate-penalty, saved in reward_config.json)") from None
        try:
            combined, mean, std = combine_ensemble(per_member, spec.combine, spec.lam)
        except ValueError as e:
            raise UserError(f"--combine: {e}") from None
        return RewardScores(list(spec.aspects), members, members.mean(0),
                            members.std(0, unbiased=False), per_member, combined, mean, std)

    @torch.no_grad()
    def score(self, prompts: list, responses: list, batch_size: int = 32) -> RewardScores:
        """Score (prompt, response) pairs in batches."""
        from alignkit.data.preferences import encode_response

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        outs = []
        for i in range(0, len(prompts), batch_size):
            enc = [encode_response(self.tokenizer, p, r, self.spec.backbone, self.spec.chat)
                   for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size])]
            outs.append(self.normalise(self.raw(encode_batch(enc, self.tokenizer.pad_token_id,
                                                             self.spec.max_length).to(device))))
        self.train(was)
        members = torch.cat(outs, dim=1) if outs else torch.zeros(
            (self.spec.members, 0, len(self.spec.aspects)))
        return self.combine(members)

    @torch.no_grad()
    def refit_normalisation(self, prompts: list, responses: list) -> dict:
        """Refit every member's and aspect's offset and scale so that these responses (fresh
        samples of the policy RL starts from) score mean 0 and std 1: the reward normalisation
        of Huang et al. 2024 ("The N Implementation Details of RLHF with PPO", sec. 4), in place
        of the fit on the reward model's training responses. Returns the old and new values."""
        raw = self.denormalise(self.score(prompts, responses).members.float().cpu())  # (M, N, A)
        before = {"offset": self.spec.offset, "scale": self.spec.scale}
        self.set_normalisation(raw)
        return {"before": before, "after": {"offset": self.spec.offset,
                                            "scale": self.spec.scale}}

    def value_model(self, member: int = 0) -> tuple[nn.Module, nn.Linear]:
        """A PPO value model initialised from this reward model (Huang et al. 2024, sec. 3:
        "initialise the value model from the reward model"): a copy of ``member``'s causal
        backbone and a one-output head that computes its normalised reward, the aspects combined
        by their weights (a gated aspect floor is not linear: its aspects count by weight).
        Returns (backbone, head)."""
        import copy

        if self.spec.backbone != "causal":
            raise UserError("--critic reward_model needs a reward model on a causal backbone "
                            f"(this one is an {self.spec.backbone}: it reads whole texts, so it "
                            "cannot value every prefix of a response in one pass); train one "
                            "with alignkit reward --model <the SFT folder>, or use --critic "
                            "shared/separate")
        source = self.members[member]
        weights = self.spec.aspect_weights or {a: 1.0 / len(self.spec.aspects)
                                               for a in self.spec.aspects}
        w = torch.tensor([float(weights.get(a, 0.0)) for a in self.spec.aspects])  # (A,)
        offset = torch.tensor(self.spec.offset[member], dtype=torch.float32)  # (A,)
        scale = torch.tensor(self.spec.scale[member], dtype=torch.float32)  # (A,)
        head = nn.Linear(source.head.in_features, 1)
        with torch.no_grad():
            # sum_a w_a * (W_a h + b_a - offset_a) / scale_a as one linear map
            head.weight.copy_(((w / scale)[:, None] * source.head.weight.float().cpu()).sum(0,
                                                                                   keepdim=True))
            head.bias.copy_((w * (source.head.bias.float().cpu() - offset) / scale).sum()[None])
        device = next(source.parameters()).device
        return copy.deepcopy(source.backbone).train(), head.to(device)


class RewardFunction:
    """Texts -> the scalar the policy maximises (the reward model's combined reward, with an
    ensemble's ``mean`` / ``min`` / ``mean - lambda * std`` per --combine), plus the ensemble mean
    and std for the logs."""

    def __init__(self, path: str | None, device: str, combine: str | None = None,
                 uncertainty_penalty: float | None = None):
        if not path or not Path(path).is_dir():
            raise UserError(f"--reward-model {path!r}: not a reward-model folder (train one with "
                            "alignkit reward, or run alignkit demo)")
        self.model = RewardModel.load(path, device)
        if combine:
            self.model.spec.combine = combine
        if uncertainty_penalty is not None:
            self.model.spec.lam = uncertainty_penalty

    def __call__(self, prompts: list, responses: list[str]) -> dict[str, torch.Tensor]:
        s = self.model.score(prompts, responses)
        return {"combined": s.combined.float(), "mean": s.mean.float(), "std": s.std.float()}


@dataclass
class ResponseBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    last_index: torch.Tensor

    def to(self, device) -> "ResponseBatch":
        return ResponseBatch(self.input_ids.to(device), self.attention_mask.to(device),
                             None if self.token_type_ids is None else self.token_type_ids.to(device),
                             self.last_index.to(device))


def encode_batch(encoded: list[tuple[list[int], list[int] | None]], pad_id: int,
                 max_length: int) -> ResponseBatch:
    """Right-pad encoded responses; longer ones keep their last ``max_length`` tokens (the end of
    the response is what a causal reward reads)."""
    seqs = [ids[-max_length:] for ids, _ in encoded]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    types = None
    if all(t is not None for _, t in encoded):
        types = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
        if types is not None:
            t = encoded[r][1][-max_length:]
            types[r, :len(t)] = torch.tensor(t)
    return ResponseBatch(ids, mask, types, (mask.sum(1) - 1).clamp(min=0))
