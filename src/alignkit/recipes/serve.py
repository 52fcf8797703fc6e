"""``alignkit serve --model DIR``: an OpenAI-compatible chat endpoint for a policy folder.

The socket is bound first (``--port 0`` picks a free port; the line ``listening on URL`` is
printed either way), then uvicorn serves while the model loads in a background thread: early
requests get 503 + Retry-After, and ``ready`` is printed once the model answers. Ctrl-C stops it.
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
    if cfg.model_name:
        return cfg.model_name
    path = Path(cfg.model)
    # runs/demo/ppo/final -> "ppo" is more telling than "final"
    if path.name == "final" and path.parent.name:
        return path.parent.name
    return path.name or cfg.model


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


def main(cfg: ServeConfig) -> dict:
    try:
        import uvicorn

        from alignkit.serve.app import ServerState, create_app
    except ImportError as e:
        raise UserError(f"alignkit serve needs the serve extra: pip install 'alignkit[serve]' "
                        f"({e})") from None
    from alignkit.serve.chat import ChatModel

    if cfg.max_tokens_limit < 1 or cfg.default_max_tokens < 1:
        raise UserError("--max-tokens-limit and --default-max-tokens must be >= 1")
    state = ServerState(served_name(cfg), cfg.max_tokens_limit,
                        min(cfg.default_max_tokens, cfg.max_tokens_limit))
    api_key = cfg.api_key or os.environ.get(API_KEY_ENV, "")
    sock = listen(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    server = uvicorn.Server(uvicorn.Config(create_app(state, api_key), log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=3))
    failure: list[BaseException] = []

    def load() -> None:
        try:
            from alignkit.models.loading import load_model_and_tokenizer, pick_device

            model, tokenizer = load_model_and_tokenizer(cfg.model, pick_device(cfg.device))
            model.eval()
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
