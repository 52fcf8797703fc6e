"""``alignkit serve --model DIR``: an OpenAI-compatible chat endpoint for a policy folder.

The socket is bound first (``--port 0`` picks a free port; the line ``listening on URL`` is
printed either way), then the model loads while early requests get 503 + Retry-After, then
``ready`` is printed. Ctrl-C stops it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alignkit.config import ServeConfig
from alignkit.errors import UserError
from alignkit.recipes.common import log


def served_name(cfg: ServeConfig) -> str:
    if cfg.model_name:
        return cfg.model_name
    path = Path(cfg.model)
    # runs/demo/ppo/final -> "ppo" is more telling than "final"
    if path.name == "final" and path.parent.name:
        return path.parent.name
    return path.name or cfg.model


def main(cfg: ServeConfig) -> dict:
    from alignkit.serve.app import ChatModel, ServerState, make_server

    if cfg.max_tokens_limit < 1 or cfg.default_max_tokens < 1:
        raise UserError("--max-tokens-limit and --default-max-tokens must be >= 1")
    state = ServerState(served_name(cfg), cfg.max_tokens_limit,
                        min(cfg.default_max_tokens, cfg.max_tokens_limit))
    try:
        server = make_server(cfg.host, cfg.port, state)
    except OSError as e:
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror or e})") from None
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}/v1"
    print(f"listening on {url} (model {state.name!r} loading)", flush=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        from alignkit.models.loading import load_model_and_tokenizer, pick_device

        model, tokenizer = load_model_and_tokenizer(cfg.model, pick_device(cfg.device))
        model.eval()
        state.chat = ChatModel(model, tokenizer, state.name)
    except UserError as e:
        state.load_error = str(e)
        server.shutdown()
        raise
    print(f"ready: POST {url}/chat/completions (model {state.name!r}); Ctrl-C stops",
          flush=True)
    log.info("serving %s at %s", cfg.model, url)
    try:
        thread.join()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.shutdown()
        server.server_close()
    return {"url": url}
