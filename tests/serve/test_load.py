"""A bounded load test on 127.0.0.1: concurrent streaming clients, a third of them hanging up mid-stream.
Every completed stream is whole, every row is freed afterwards, and /health answers throughout."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from serve_helpers import PROMPTS, ServerThread, scrape, wait_for

CLIENTS = 18
MAX_TOKENS = 32


def test_streaming_load_with_disconnects(server: ServerThread) -> None:
    url = f"{server.url}/v1/completions"
    expected = {}
    for prompt in PROMPTS:  # the non-streamed greedy text of each prompt, one request at a time
        body = {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
        expected[prompt] = httpx.post(url, json=body, timeout=30).json()["choices"][0]["text"]
    before = scrape(server.url)

    health_codes: list[int] = []
    stop_polling = threading.Event()

    def poll_health() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop_polling.is_set():
                health_codes.append(c.get(f"{server.url}/health").status_code)
                stop_polling.wait(0.02)

    def client(i: int) -> tuple[str, str, list[str]]:
        prompt = PROMPTS[i % len(PROMPTS)]
        body = {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
                "ignore_eos": i % 2 == 0}  # fmt: skip
        hang_up = i % 3 == 0
        lines: list[str] = []
        with httpx.Client(timeout=30) as c, c.stream("POST", url, json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    lines.append(line[len("data: ") :])
                if hang_up and len(lines) == 2:
                    break  # leaving the block closes the connection mid-stream
        return prompt, "hung_up" if hang_up else "done", lines

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(client, range(CLIENTS)))
    finally:
        stop_polling.set()
        poller.join()

    completed = 0
    for i, (prompt, outcome, lines) in enumerate(results):
        if outcome == "hung_up":
            continue
        completed += 1
        assert lines[-1] == "[DONE]", f"client {i}: the stream did not end with [DONE]"
        chunks = [json.loads(line) for line in lines[:-1]]
        text = "".join(c["choices"][0]["text"] for c in chunks)
        reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
        assert len(reasons) == 1 and chunks[-1]["choices"][0]["finish_reason"] == reasons[0]
        if i % 2:  # eos allowed: exactly the non-streamed text
            assert text == expected[prompt], f"client {i}"
        else:  # ignore_eos: at least as long, and the same up to any EOS
            assert text.startswith(expected[prompt]) and reasons == ["length"], f"client {i}"
    assert completed == CLIENTS - len(range(0, CLIENTS, 3))

    # Every row and queue place is free again, the server is healthy, and it batched.
    assert wait_for(lambda: scrape(server.url)["lmforge_running_batch_size"] == 0, timeout=5)
    after = scrape(server.url)
    assert after["lmforge_queue_depth"] == 0
    assert after["lmforge_max_running_batch_size"] >= 4  # rows were shared
    served = sum(after[f'lmforge_sequences_total{{outcome="{o}"}}'] - before[f'lmforge_sequences_total{{outcome="{o}"}}']
                 for o in ("finished", "cancelled"))  # fmt: skip
    assert served == CLIENTS and after['lmforge_sequences_total{outcome="failed"}'] == 0
    route = 'route="/v1/completions"'
    ok = f'lmforge_requests_total{{method="POST",{route},status="200"}}'
    assert after[ok] - before[ok] == CLIENTS
    latency = f"lmforge_request_duration_seconds_count{{{route}}}"
    assert after[latency] - before[latency] == CLIENTS
    first_token = f"lmforge_time_to_first_token_seconds_count{{{route}}}"
    assert after[first_token] - before[first_token] == CLIENTS
    assert health_codes and set(health_codes) == {200}
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
