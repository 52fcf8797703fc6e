"""``alignkit serve --model DIR``: an OpenAI-compatible chat endpoint for a policy folder.

The socket is bound first (``--port 0`` picks a free port; the line ``listening on URL`` is
printed either way), then uvicorn serves while the model loads in a background thread: early
requests get 503 + Retry-After, and ``ready`` is printed once the model answers. Ctrl-C stops it.

``--rollout-engine vllm`` serves through vLLM's own OpenAI-compatible server instead, started
here as a child process with the flags mapped (``vllm_command``): continuous batching, a paged
KV cache and token streaming for many concurrent users are what vLLM is built for, and its
server already speaks the whole chat-completions API, so alignkit does not wrap it. The same
``listening on`` and ``ready`` lines are printed; ``/stats`` is alignkit's own and absent there.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from alignkit.config import ServeConfig
from alignkit.errors import UserError
from alignkit.utils.logs import log

API_KEY_ENV = "ALIGNKIT_API_KEY"


def served_name(cfg: ServeConfig) -> str:
    return cfg.model_name or folder_name(cfg.model)


def folder_name(model: str) -> str:
    path = Path(model)
    # runs/demo/ppo/final -> "ppo" is more telling than "final"
    if path.name == "final" and path.parent.name:
        return path.parent.name
    return path.name or model


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def free_port(host: str) -> int:
    with listen(host, 0) as sock:
        return sock.getsockname()[1]


def vllm_command(cfg: ServeConfig, port: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of vLLM's OpenAI server for ``cfg``: the resolved
    model folder, the served name, host and port; ``--default-max-tokens`` as the generation
    config's length (vLLM has no cap of its own on a request's max_tokens: the context,
    ``--vllm-max-model-len``, bounds prompt + answer); ``--chat-template`` as a file; the API key
    through ``VLLM_API_KEY`` (never on the command line, where the process list shows it); the
    CPU build's environment (``generation.vllm_engine.engine_environment``)."""
    import json
    import sys

    import torch

    from alignkit.generation.vllm_engine import engine_environment
    from alignkit.models.chat_templates import active_chat_template
    from alignkit.models.loading import resolve_model

    cuda = torch.cuda.is_available()
    dtype = cfg.rollout_dtype if cfg.rollout_dtype != "auto" else ("bf16" if cuda else "fp32")
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", resolve_model(cfg.model), "--served-model-name", served_name(cfg),
               "--host", cfg.host, "--port", str(port),
               "--dtype", {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype],
               "--generation-config", "vllm", "--override-generation-config",
               json.dumps({"max_new_tokens": min(cfg.default_max_tokens, cfg.max_tokens_limit)}),
               "--disable-uvicorn-access-log"]
    if cfg.vllm_max_model_len:
        command += ["--max-model-len", str(cfg.vllm_max_model_len)]
    template = active_chat_template()
    if template is not None:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="alignkit-serve-")) / "chat_template.jinja"
        path.write_text(template, encoding="utf-8")
        command += ["--chat-template", str(path)]
    if cuda:
        command += ["--gpu-memory-utilization", str(cfg.vllm_gpu_memory)]
    else:
        command += ["--enforce-eager"]
    env = {**engine_environment(cfg.vllm_kv_cache_gb), **os.environ}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # a server keeps vLLM's own processes
    api_key = cfg.api_key or os.environ.get(API_KEY_ENV, "")
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return command, env


def serve_with_vllm(cfg: ServeConfig) -> dict:
    """``--rollout-engine vllm``: run vLLM's server until it stops or Ctrl-C; print when it
    answers."""
    import subprocess
    import time
    import urllib.request

    from alignkit.generation.vllm_engine import import_vllm, vllm_available

    if not vllm_available():
        import_vllm()  # the install hint
    port = cfg.port or free_port(cfg.host)
    command, env = vllm_command(cfg, port)
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    print(f"listening on {url} (model {served_name(cfg)!r} loading in vLLM"
          f"{'; API key required' if 'VLLM_API_KEY' in env else ''})", flush=True)
    child = subprocess.Popen(command, env=env)
    try:
        while child.poll() is None:
            try:
                with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        if child.poll() is None:
            print(f"ready: POST {url}/chat/completions (model {served_name(cfg)!r}, vLLM); "
                  "Ctrl-C stops", flush=True)
        code = child.wait()
    except KeyboardInterrupt:
        child.terminate()
        code = child.wait()
    if code not in (0, -2, -15):
        raise UserError(f"vLLM's server stopped with exit code {code} (its output is above)")
    print("stopped", flush=True)
    return {"url": url}


def mount_feedback_chat(app, state, cfg: ServeConfig, second: list) -> None:
    """``--feedback-db``: the chat page of ``feedback.chat_app`` at ``/chat``, its answers made
    on the API's model thread (one answer at a time, queued with the API's requests) and counted
    in ``/v1/stats``; the annotation store is migrated first. ``second`` holds the
    ``--feedback-model-b`` policy once it is loaded."""
    try:
        from alignkit.feedback.chat_app import Unavailable, create_chat_app
        from alignkit.feedback.store import Invalid, Store
    except ImportError as e:
        raise UserError(f"--feedback-db needs the web extra: pip install 'alignkit[web]' "
                        f"({e})") from None
    from alignkit.serve.chat import ChatRequest, RequestError

    store = Store(cfg.feedback_db)
    store.upgrade()
    worker = app.state.worker
    max_tokens = state.default_max_tokens

    names = [state.name]
    if cfg.feedback_model_b:
        name_b = folder_name(cfg.feedback_model_b)
        names.append(name_b if name_b != state.name else f"{name_b} (B)")

    async def generate(messages: list[dict], seed: int, policy: int) -> str:
        chat = state.chat if policy == 0 else (second[0] if second else None)
        if chat is None:
            raise Unavailable(f"the model is {'not loaded' if state.load_error else 'loading'};"
                              " retry shortly")
        if worker.pending >= state.max_queue:
            raise Unavailable(f"{worker.pending} answers are queued or running; retry shortly")
        req = ChatRequest(messages, max_tokens, cfg.feedback_temperature, cfg.feedback_top_p,
                          1, [], seed, False, names[policy])

        def counted_answer() -> dict:
            out = chat.complete(req)
            state.count_usage(out["usage"])
            return out

        try:
            out = await worker.call(counted_answer)
        except RequestError as e:  # e.g. the conversation outgrew the model's context
            raise Invalid(str(e)) from None
        return out["choices"][0]["message"]["content"]

    app.mount("/chat", create_chat_app(store, generate, names, cfg.feedback_temperature,
                                       cfg.feedback_top_p, max_tokens))


def main(cfg: ServeConfig) -> dict:
    if cfg.rollout_engine == "vllm":
        if cfg.feedback_db or cfg.feedback_model_b:
            raise UserError("--feedback-db needs --rollout-engine hf (the chat page runs on "
                            "alignkit's own server)")
        return serve_with_vllm(cfg)
    try:
        import uvicorn

        from alignkit.serve.app import ServerState, create_app
    except ImportError as e:
        raise UserError(f"alignkit serve needs the serve extra: pip install 'alignkit[serve]' "
                        f"({e})") from None
    from alignkit.serve.chat import ChatModel
    from alignkit.utils.http import h11_with_header_deadline

    if cfg.max_tokens_limit < 1 or cfg.default_max_tokens < 1:
        raise UserError("--max-tokens-limit and --default-max-tokens must be >= 1")
    state = ServerState(served_name(cfg), cfg.max_tokens_limit,
                        min(cfg.default_max_tokens, cfg.max_tokens_limit),
                        max_request_bytes=int(cfg.max_request_mb * 2**20),
                        request_timeout=cfg.request_timeout, max_queue=cfg.max_queue)
    api_key = cfg.api_key or os.environ.get(API_KEY_ENV, "")
    sock = listen(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    if cfg.feedback_model_b and not cfg.feedback_db:
        raise UserError("--feedback-model-b answers on the chat page of --feedback-db: give "
                        "both")
    app = create_app(state, api_key)
    second: list = []  # the --feedback-model-b policy, once loaded
    if cfg.feedback_db:
        mount_feedback_chat(app, state, cfg, second)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=3,
                                           http=h11_with_header_deadline(cfg.request_timeout)))
    failure: list[BaseException] = []

    def load() -> None:
        try:
            from alignkit.models.loading import load_model_and_tokenizer, pick_device

            model, tokenizer = load_model_and_tokenizer(cfg.model, pick_device(cfg.device))
            model.eval()
            if cfg.feedback_model_b:  # loaded first: ready means both answer
                model_b, tokenizer_b = load_model_and_tokenizer(cfg.feedback_model_b,
                                                                pick_device(cfg.device))
                model_b.eval()
                second.append(ChatModel(model_b, tokenizer_b, folder_name(cfg.feedback_model_b)))
            state.chat = ChatModel(model, tokenizer, state.name)
        except Exception as e:  # raised by the main thread once the server has stopped
            state.load_error = str(e)
            failure.append(e)
            server.should_exit = True
            return
        print(f"ready: POST {url}/chat/completions (model {state.name!r}); Ctrl-C stops",
              flush=True)
        log.info("serving %s at %s", cfg.model, url)

    print(f"listening on {url} (model {state.name!r} loading"
          f"{'; API key required' if api_key else ''})", flush=True)
    if cfg.feedback_db:
        print(f"chat page: {url.removesuffix('/v1')}/chat/ (sign in with an annotation-store "
              "account; conversations and ratings are stored in --feedback-db)", flush=True)
    threading.Thread(target=load, name="alignkit-load", daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it stopped on
        pass
    finally:
        sock.close()
    if failure:
        raise failure[0]
    print("stopped", flush=True)
    return {"url": url}
