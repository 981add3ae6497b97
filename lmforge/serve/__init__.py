"""`lmforge serve`: an OpenAI-compatible HTTP server with continuous batching (and the dashboard).

    lmforge serve runs/shk                                   # http://127.0.0.1:8000/v1/...
    lmforge serve runs/sst2-classify serve.port=8080         # a classifier: POST /v1/classify
    lmforge serve runs/sft/adapter --base runs/base          # a LoRA adapter over its base
    LMFORGE_API_KEYS=k1,k2 lmforge serve model.onnx          # API keys; an exported ONNX model

`app.py` holds the routes (`create_app`), `batching.py` the engine thread and scheduler, `backends.py` the
models and their batch decoders, `protocol.py` the request bodies, `security.py` API keys and the body limit,
`metrics.py` the Prometheus metrics.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import TYPE_CHECKING, Any

from lmforge.errors import ConfigError, LmforgeError

if TYPE_CHECKING:
    from lmforge.config import Config, ServeConfig

log = logging.getLogger("lmforge")

__all__ = ["run_serve"]


def check_settings(sc: ServeConfig) -> None:
    """Bad serve.* values as one line each, before anything loads."""
    checks = [
        ("port", 0 <= sc.port <= 65535, "in 0..65535"),
        ("max_batch_size", sc.max_batch_size >= 1, "at least 1"),
        ("max_queue", sc.max_queue >= 0, "at least 0"),
        ("max_prefill_tokens", sc.max_prefill_tokens >= 1, "at least 1"),
        ("default_max_tokens", sc.default_max_tokens >= 1, "at least 1"),
        ("max_tokens_limit", sc.max_tokens_limit is None or sc.max_tokens_limit >= 1, "at least 1 (or null)"),
        ("max_n", sc.max_n >= 1, "at least 1"),
        ("max_body_bytes", sc.max_body_bytes >= 1024, "at least 1024"),
        ("shutdown_timeout", sc.shutdown_timeout >= 0, "at least 0"),
        ("host", bool(sc.host), "an address (127.0.0.1, ::1, 0.0.0.0)"),
    ]
    for key, ok, what in checks:
        if not ok:
            raise ConfigError(f"serve.{key} must be {what}, got {getattr(sc, key)!r}")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one), or a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]  # fmt: skip
    except socket.gaierror as exc:
        raise ConfigError(f"serve.host: cannot resolve {host!r} ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise LmforgeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def run_serve(cfg: Config) -> None:
    """Load the model(s), listen, serve until SIGINT/SIGTERM, then finish in-flight requests and exit."""
    import uvicorn

    from lmforge.serve.app import create_app

    sc = cfg.serve
    check_settings(sc)
    if not sc.model and not sc.classifier:
        raise ConfigError("no model given: lmforge serve MODEL (a checkpoint, run, adapter, HF dir or .onnx file)")
    sock = bind_socket(sc.host, sc.port)
    try:
        app = create_app(cfg)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        state = app.state.lmforge
        print(f"lmforge serve: http://{shown}:{port}  models: {', '.join(state.served.names())}  "
              f"(OpenAI API under /v1{'; API keys required' if state.keys.enabled else ''})",
              file=sys.stderr, flush=True)  # fmt: skip
        if sc.host not in ("127.0.0.1", "localhost", "::1") and not state.keys.enabled:
            log.warning("serve: listening on %s without API keys: anyone who can reach it can use it", sc.host)
        config = uvicorn.Config(app, lifespan="on", access_log=sc.access_log, log_level="info",
                                timeout_graceful_shutdown=sc.shutdown_timeout)  # fmt: skip
        graceful_server(config).run(sockets=[sock])
    finally:
        sock.close()
    print("lmforge serve: stopped", file=sys.stderr, flush=True)


def graceful_server(config: Any) -> Any:
    """A uvicorn.Server for `config` that, once SIGINT/SIGTERM has shut it down gracefully, lets the process
    end normally (status 0) instead of raising the signal again afterwards (uvicorn's default)."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return GracefulServer(config)
