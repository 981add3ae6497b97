"""A tiny model saved as a run directory, a real uvicorn server in a thread, and /metrics parsing."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from lmforge.config import TokenizerConfig
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.serve import bind_socket
from lmforge.tokenizer.train import char_tokenizer, save_tokenizer, special_tokens
from lmforge.train.checkpoint import save_checkpoint

TEXT = "To be, or not to be, that is the question. Whether 'tis nobler in the mind to suffer.\n"
PROMPTS = ["To be", "Whether 'tis", "the mind", "or not", "that is the q", "T", "nobler in", "suffer"]


def make_tokenizer() -> tuple[Any, TokenizerConfig]:
    tc = TokenizerConfig(kind="char")
    return char_tokenizer(sorted(set(TEXT)), special_tokens(tc), tc.unk_token), tc


def make_model(vocab_size: int, block_size: int = 64, flavour: str = "gpt2", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=4, n_embd=32, flavour=flavour,
                    n_kv_head=2 if flavour == "llama" else None)  # fmt: skip
    model = GPT(cfg)
    with torch.no_grad():  # larger weights than the 0.02 init: varied text and fewer near-tie logits
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model.eval()


def make_run(run: Path, block_size: int = 64, flavour: str = "gpt2", seed: int = 0) -> Path:
    """runs/<name>/: the tokenizer files (chat template in tokenizer_config.json) and one checkpoint."""
    run.mkdir(parents=True, exist_ok=True)
    tokenizer, tc = make_tokenizer()
    model = make_model(tokenizer.get_vocab_size(), block_size, flavour, seed)
    save_tokenizer(tokenizer, run, tc, model_max_length=block_size)
    eos = tokenizer.token_to_id(tc.eos_token)
    save_checkpoint(run / "checkpoints", 1, model.state_dict(), model.config.to_dict(), {"step": 1},
                    {"step": 1, "eos_id": eos}, tokenizer_file=run / "tokenizer.json")  # fmt: skip
    return run


class ServerThread:
    """uvicorn serving `app` on a free loopback port, in a thread, with its lifespan (the engine)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False,
                                timeout_graceful_shutdown=10)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def state(self) -> Any:
        return self.app.state.lmforge

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


def scrape(url: str) -> dict[str, float]:
    """/metrics as {'name{label="v",...}': value} (labels sorted) plus bare names for unlabelled samples."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def sse_lines(response: httpx.Response) -> list[str]:
    """The `data:` payloads of a server-sent-events response, in order."""
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
