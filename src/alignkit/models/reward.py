"""Reward models: a scalar (or per-aspect) head on a backbone, ensembles of them, the folder
format they save to and reload from with one call, and ``RewardFunction``: a saved model as the
reward a policy is trained, selected or judged by (PPO, online DPO, best-of-n, reward judges).

A member reads a response exactly as the backbone family's own ``*ForSequenceClassification``
does, so that every saved member is a standard Hugging Face model (``CLASSIFIER_LAYOUTS``):
- ``causal`` (any causal LM, e.g. the SFT model): the chat-rendered conversation, the final hidden
  state of the last token that is not padding (InstructGPT; Ziegler et al. 2019), a linear map
  without bias (``score``);
- ``encoder`` (BERT-like, e.g. the packaged all-MiniLM-L6-v2): the (prompt, response) text pair,
  the first ([CLS]) token's final hidden state through the family's pooler (BERT: dense + tanh),
  then a linear map (``classifier``).

Folder layout (``RewardModel.save``/``load``)::

    reward_config.json      backbone kind, aspects, members, normalisation, combination rules
    README.md               a model card: what the folder is and how to load a member
    member-0/ ... member-(M-1)/   each a sequence-classification folder (config.json,
                            model.safetensors, tokenizer) with one label per aspect: plain
                            ``AutoModelForSequenceClassification`` scores what alignkit scores
                            for that member (normalisation folded into the final linear map)
    (shared backbone: backbone/, one sequence-classification folder with a label per member and
    aspect, ``member-m/aspect``)

A causal family's final map has no bias, so a normalisation offset cannot be folded into it: its
``config.json`` carries ``score_offset`` (per label), added to the logits to give alignkit's score
(encoders fold everything; their ``score_offset`` is absent).
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from alignkit.errors import UserError
from alignkit.models.chat_templates import apply_chat_template_option

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
    from transformers import AutoModel

    return _load(AutoModel, path, device)


def load_classifier(path: str, device: str = "cpu"):
    """A saved member: its ``AutoModelForSequenceClassification`` and tokenizer."""
    from transformers import AutoModelForSequenceClassification

    return _load(AutoModelForSequenceClassification, path, device)


def _load(auto_class, path: str, device: str):
    from transformers import AutoTokenizer

    from alignkit.models.loading import quiet_transformers

    quiet_transformers()
    try:
        model = auto_class.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(f"{path}: cannot load a reward-model backbone ({str(e).splitlines()[0]})") \
            from None
    if backbone_kind(model.config) == "causal":
        apply_chat_template_option(tok)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    # no dropout: a reward is a deterministic function of the text, and the Bradley-Terry
    # difference of two noisy forward passes is noise (TRL's RewardTrainer does the same)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.to(device), tok


def reward_model_card(spec: RewardSpec, data: str = "", heldout: dict | None = None) -> str:
    """README.md of a saved reward model: what it is, what it was trained on, its held-out
    metrics and how any tool loads a member."""
    numbers = "\n".join(f"| {k} | {v:.4g} |" for k, v in (heldout or {}).items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool))
    evaluation = ("\n## Held-out evaluation\n\n| metric | value |\n|---|---|\n" + numbers + "\n"
                  if numbers else "")
    members = "backbone/ (one label per member and aspect)" if spec.shared_backbone else \
        ", ".join(f"member-{m}/" for m in range(spec.members))
    offset = ("- The causal family's final map has no bias: add `config.score_offset` (one value "
              "per label) to the logits to get alignkit's score; rankings and score differences "
              "need nothing.\n" if spec.backbone == "causal" else "")
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [alignkit, reward-model]
---
# Reward model ({spec.members} member{"s" if spec.members > 1 else ""}, trained with alignkit)

- Base model: `{spec.base_model}` ({spec.backbone} backbone){f"; data: `{data}`" if data else ""}
- Aspects (one output label each): {", ".join(spec.aspects)}
- Members: {members}; combined by `{spec.combine}`{f" (lambda {spec.lam})" if spec.combine.startswith("mean_minus") else ""}
- Scores are normalised per member and aspect (mean 0, std 1 on the responses they were fitted
  on); the normalisation is folded into each member's weights.
{offset}
Every member folder is a standard sequence-classification model:

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained("{"backbone" if spec.shared_backbone else "member-0"}")
tokenizer = AutoTokenizer.from_pretrained("{"backbone" if spec.shared_backbone else "member-0"}")
```

{"Encoder members read the (prompt, response) text pair: `tokenizer(prompt, response)`."
 if spec.backbone == "encoder" else
 "Causal members read the whole conversation rendered with the chat template "
 "(`tokenizer.apply_chat_template(messages, tokenize=False)`)."}
`alignkit score --reward-model <this folder>` loads all members as one ensemble and applies
`reward_config.json`'s combination rules.
{evaluation}"""


@dataclass(frozen=True)
class ClassifierLayout:
    """How a family's ``*ForSequenceClassification`` turns a backbone's hidden states into scores.

    pooling: ``last`` (the last token that is not padding) or ``first`` (the [CLS] token).
    pre: the layer between the pooled state and the final map, by its name in the classifier:
    ``None`` (none), ``"pooler"`` (the backbone's own pooler, BERT-style) or a submodule path
    (``classifier.dense``), with ``act`` its activation. final: the final linear map's path."""

    pooling: str
    pre: str | None
    act: str | None
    final: str


CAUSAL_LAYOUT = ClassifierLayout("last", None, None, "score")
CLASSIFIER_LAYOUTS = {
    "bert": ClassifierLayout("first", "pooler", None, "classifier"),
    "albert": ClassifierLayout("first", "pooler", None, "classifier"),
    "roberta": ClassifierLayout("first", "classifier.dense", "tanh", "classifier.out_proj"),
    "xlm-roberta": ClassifierLayout("first", "classifier.dense", "tanh", "classifier.out_proj"),
    "mpnet": ClassifierLayout("first", "classifier.dense", "tanh", "classifier.out_proj"),
    "electra": ClassifierLayout("first", "classifier.dense", "gelu", "classifier.out_proj"),
    "distilbert": ClassifierLayout("first", "pre_classifier", "relu", "classifier"),
    "deberta": ClassifierLayout("first", "pooler.dense", "pooler_hidden_act", "classifier"),
    "deberta-v2": ClassifierLayout("first", "pooler.dense", "pooler_hidden_act", "classifier"),
}


def classifier_layout(config) -> ClassifierLayout:
    model_type = getattr(config, "model_type", "")
    if backbone_kind(config) == "causal":
        return CAUSAL_LAYOUT
    if model_type not in CLASSIFIER_LAYOUTS:
        raise UserError(f"a {model_type} encoder cannot be a reward-model backbone yet (its "
                        "sequence-classification head is not mapped); encoders that can: "
                        f"{', '.join(sorted(CLASSIFIER_LAYOUTS))}, or any causal LM")
    return CLASSIFIER_LAYOUTS[model_type]


def _activation(layout: ClassifierLayout, config) -> nn.Module:
    from transformers.activations import ACT2FN

    name = getattr(config, layout.act, "gelu") if layout.act == "pooler_hidden_act" else layout.act
    return ACT2FN[name]


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


def first_index_packed(token_response: torch.Tensor, n: int) -> torch.Tensor:
    """(Rows, L) owner of each token (-1: none) -> (N,) flat index of each response's first
    token."""
    owner = token_response.flatten()
    keep = owner >= 0
    positions = torch.arange(owner.numel(), device=owner.device)
    first = torch.full((n,), owner.numel(), dtype=torch.long, device=owner.device)
    return first.scatter_reduce(0, owner[keep], positions[keep], reduce="amin")


class RewardMember(nn.Module):
    """One backbone read the way its family's sequence classifier reads it, with a linear map to
    one output per aspect: forward -> (N, A) raw rewards. ``pre``: the classifier's dense layer
    between the pooled state and the map for families that have one outside the backbone (shared
    by the members of a shared backbone)."""

    def __init__(self, backbone: nn.Module, kind: str, num_aspects: int,
                 pre: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.kind = kind
        natural = backbone_kind(backbone.config)
        if kind != natural:
            model_type = getattr(backbone.config, "model_type", "?")
            raise UserError(f"--backbone {kind}: a {model_type} model reads text as a {natural} "
                            f"model does (its sequence classifier is one); use --backbone "
                            f"{natural} or auto")
        self.layout = classifier_layout(backbone.config)
        hidden = backbone.config.hidden_size
        if self.layout.pre not in (None, "pooler") and pre is None:
            pre = nn.Linear(hidden, hidden)
            std = getattr(backbone.config, "initializer_range", 0.02)
            nn.init.normal_(pre.weight, std=std)
            nn.init.zeros_(pre.bias)
        self.pre = pre
        self.act = _activation(self.layout, backbone.config) if self.layout.act else None
        if self.layout.pre == "pooler" and getattr(backbone, "pooler", None) is None:
            raise ValueError(f"{type(backbone).__name__} has no pooler: load it with one "
                             "(AutoModel does)")
        # a family without segment embeddings (DistilBERT) takes no token_type_ids
        self.takes_types = "token_type_ids" in inspect.signature(backbone.forward).parameters
        self.head = nn.Linear(hidden, num_aspects, bias=kind != "causal")
        nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def pooled(self, first: torch.Tensor) -> torch.Tensor:
        """(N, H) first-token states -> (N, H) what the classifier's final map reads."""
        if self.layout.pre == "pooler":
            pooler = self.backbone.pooler
            if hasattr(pooler, "dense"):  # BertPooler
                return pooler.activation(pooler.dense(first))
            return self.backbone.pooler_activation(pooler(first))  # ALBERT
        return self.act(self.pre(first))

    def features(self, batch) -> torch.Tensor:
        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.token_type_ids is not None and self.kind == "encoder" and self.takes_types:
            kwargs["token_type_ids"] = batch.token_type_ids
        if self.kind == "causal":
            kwargs["use_cache"] = False  # training and scoring never decode
        packed = getattr(batch, "position_ids", None) is not None
        if packed:
            kwargs["position_ids"] = batch.position_ids
        hidden = self.backbone(**kwargs).last_hidden_state
        if self.kind == "causal":
            if packed:
                return hidden.flatten(0, 1)[batch.last_index]
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.last_index]
        if packed:
            first = hidden.flatten(0, 1)[first_index_packed(batch.token_response,
                                                            batch.last_index.numel())]
        else:
            first = hidden[:, 0]
        return self.pooled(first)

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
        members, shared_pre = [], None
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
            member = RewardMember(body, spec.backbone, len(spec.aspects), pre=shared_pre)
            if spec.shared_backbone:
                shared_pre = member.pre
            members.append(member.to(device))
        spec.offset = [[0.0] * len(spec.aspects) for _ in range(spec.members)]
        spec.scale = [[1.0] * len(spec.aspects) for _ in range(spec.members)]
        spec.base_model = base
        return cls(spec, members, tok)

    def add_adapters(self, r: int, alpha: int, dropout: float, targets: str) -> None:
        """Train LoRA adapters on each member's own backbone instead of all its weights (the
        head, and the family's pre-layer, stay fully trained). A save folds the adapters into
        the weights, so the folder is the same plain sequence classifiers as full training
        writes."""
        from alignkit.models.lora import add_lora

        if self.spec.shared_backbone:
            raise ValueError("a shared backbone is frozen: there is nothing to adapt")
        for member in self.members:
            member.backbone = add_lora(member.backbone, r, alpha, dropout, targets,
                                       task_type="FEATURE_EXTRACTION")

    def classifier_folder(self, members: list[int], folder: Path) -> None:
        """Write ``members`` (all sharing one backbone) as one standard sequence-classification
        folder with a label per (member, aspect): the backbone, the family's pre-layer and the
        final map with each label's normalisation folded in."""
        from transformers import AutoModelForSequenceClassification

        from alignkit.models.loading import quiet_transformers
        from alignkit.models.lora import merged_state_dict

        quiet_transformers()
        first = self.members[members[0]]
        aspects = self.spec.aspects
        labels = aspects if len(members) == 1 and not self.spec.shared_backbone else \
            [f"member-{m}/{a}" for m in members for a in aspects]
        config = copy.deepcopy(first.backbone.config)
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
        config.problem_type = "regression"
        if self.spec.backbone == "causal":  # where the classifier reads: the last non-padding
            config.pad_token_id = self.tokenizer.pad_token_id
        # fp32 as trained, whatever dtype the base model's config names
        classifier = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        missing, _ = classifier.base_model.load_state_dict(merged_state_dict(first.backbone),
                                                           strict=False)
        if missing:
            raise RuntimeError(f"the sequence classifier's backbone lacks {missing[:3]}")
        layout = first.layout
        if layout.pre not in (None, "pooler"):
            classifier.get_submodule(layout.pre).load_state_dict(first.pre.state_dict())
        offset = torch.tensor([self.spec.offset[m] for m in members]).flatten()
        scale = torch.tensor([self.spec.scale[m] for m in members]).flatten()
        weight = torch.cat([self.members[m].head.weight.detach().float().cpu() for m in members])
        bias = torch.cat([self.members[m].head.bias.detach().float().cpu()
                          if self.members[m].head.bias is not None
                          else torch.zeros(len(aspects)) for m in members])
        final = classifier.get_submodule(layout.final)
        with torch.no_grad():
            final.weight.copy_(weight / scale[:, None])
            if final.bias is not None:
                final.bias.copy_((bias - offset) / scale)
            else:  # the family's map has no bias: the offset rides in the config
                config.score_offset = ((bias - offset) / scale).tolist()
                classifier.config.score_offset = config.score_offset
        classifier.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))

    def save(self, path: str | Path, data: str = "", heldout: dict | None = None) -> Path:
        """Write the folder atomically (a temporary folder renamed into place); ``data`` and
        ``heldout`` (metrics) go on its model card."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "reward_config.json").write_text(json.dumps(asdict(self.spec), indent=1))
        if self.spec.shared_backbone:
            self.classifier_folder(list(range(len(self.members))), tmp / "backbone")
        else:
            for m in range(len(self.members)):
                self.classifier_folder([m], tmp / f"member-{m}")
        (tmp / "README.md").write_text(reward_model_card(self.spec, data, heldout))
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "RewardModel":
        path = Path(path)
        cfg_file = path / "reward_config.json"
        if not cfg_file.is_file():
            raise UserError(f"{path}: not a reward model folder (no reward_config.json)")
        spec = RewardSpec(**json.loads(cfg_file.read_text()))
        folders = [path / "backbone"] if spec.shared_backbone else \
            [path / f"member-{m}" for m in range(spec.members)]
        if any((f / "head.safetensors").exists() for f in folders):
            raise UserError(f"{path}: saved by an earlier alignkit (a separate head.safetensors, "
                            "mean-pooled encoders); train it again with alignkit reward")
        members, tok = [], None
        a = len(spec.aspects)
        for i, folder in enumerate(folders):
            classifier, tok_i = load_classifier(str(folder), device)
            tok = tok or tok_i
            body = classifier.base_model
            layout = CAUSAL_LAYOUT if spec.backbone == "causal" else classifier_layout(body.config)
            pre = None if layout.pre in (None, "pooler") else classifier.get_submodule(layout.pre)
            final = classifier.get_submodule(layout.final)
            shift = getattr(classifier.config, "score_offset", None)
            for m in (range(spec.members) if spec.shared_backbone else [i]):
                member = RewardMember(body, spec.backbone, a, pre=pre)
                rows = slice(a * m, a * (m + 1)) if spec.shared_backbone else slice(0, a)
                offset = torch.tensor(spec.offset[m], dtype=torch.float32)
                scale = torch.tensor(spec.scale[m], dtype=torch.float32)
                with torch.no_grad():  # unfold the normalisation: the head gives raw rewards
                    member.head.weight.copy_(final.weight[rows].float() * scale[:, None])
                    folded = final.bias[rows].float() if final.bias is not None else \
                        torch.tensor(shift[rows], dtype=torch.float32)
                    raw_bias = folded * scale + offset
                    if member.head.bias is not None:
                        member.head.bias.copy_(raw_bias)
                    elif raw_bias.abs().max() > 1e-4 * (1 + offset.abs().max()):
                        raise UserError(f"{folder}: its score offset does not match "
                                        "reward_config.json's normalisation")
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
            bias = source.head.bias.float().cpu() if source.head.bias is not None else 0.0
            head.bias.copy_((w * (bias - offset) / scale).sum()[None])
        device = next(source.parameters()).device
        return copy.deepcopy(source.backbone).train(), head.to(device)


class RewardFunction:
    """Texts -> the scalar the policy maximises (the reward model's combined reward, with an
    ensemble's ``mean`` / ``min`` / ``mean - lambda * std`` per --combine), plus the ensemble mean
    and std for the logs."""

    def __init__(self, path: str | None, device: str, combine: str | None = None,
                 uncertainty_penalty: float | None = None, members: int | None = None):
        """``members``: score with the ensemble's first ``members`` members only (1: a single
        reward model out of an ensemble, as in Coste et al.'s comparison)."""
        if not path or not Path(path).is_dir():
            raise UserError(f"--reward-model {path!r}: not a reward-model folder (train one with "
                            "alignkit reward, or run alignkit demo)")
        self.model = RewardModel.load(path, device)
        if combine:
            self.model.spec.combine = combine
        if uncertainty_penalty is not None:
            self.model.spec.lam = uncertainty_penalty
        if members is not None and not 1 <= members <= self.model.spec.members:
            raise UserError(f"{path}: has {self.model.spec.members} members; cannot score with "
                            f"{members}")
        self.members = members

    def __call__(self, prompts: list, responses: list[str]) -> dict[str, torch.Tensor]:
        s = self.model.score(prompts, responses)
        if self.members is not None and self.members < s.per_member.shape[0]:
            s = self.model.combine(s.members[:self.members])
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
