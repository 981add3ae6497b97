"""The playground against the real `lmforge serve` app (its OpenAI-compatible API and the dashboard on one
origin), and `lmforge dashboard --api-base` proxying to it: streamed chat and per-class probabilities."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import screenshot
from dash_helpers import ServerThread, error_message, get, post

from lmforge.serve.dashboard import create_dashboard_app

CHAT = {"messages": [{"role": "user", "content": "hello"}], "temperature": 0, "max_tokens": 24}


@pytest.fixture(scope="module")
def served(runs: Path) -> Iterator[ServerThread]:
    app_module = pytest.importorskip("lmforge.serve.app", reason="lmforge serve (lmforge/serve/app.py) is not there")
    from lmforge.config import ServeConfig

    config = ServeConfig(model=str(runs / "lm"), classifier=str(runs / "cls"), runs_dir=str(runs), device="cpu")
    with ServerThread(app_module.create_app(config)) as server:
        yield server


def model_ids(url: str) -> dict[str, dict[str, Any]]:
    status, body = get(f"{url}/v1/models")
    assert status == 200
    return {m["id"]: m for m in body["data"]}


def sse_chunks(url: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps({**payload, "stream": True}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    events = []
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.read().decode().splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def test_chat_streams_and_classifier_shows_probabilities(page: Any, served: ServerThread) -> None:
    models = model_ids(served.url)
    lm = next(name for name, m in models.items() if m.get("kind") != "classifier")
    _, reply = post(f"{served.url}/v1/chat/completions", {**CHAT, "model": lm})
    expected = reply["choices"][0]["message"]["content"]
    assert expected

    page.goto(f"{served.url}/#/playground")
    page.locator("#chat-model").select_option(lm)
    page.locator("#temperature").fill("0")
    page.locator("#max-tokens").fill(str(CHAT["max_tokens"]))
    page.locator("#chat-input").fill("hello")
    page.locator("#chat-send").click()
    answer = page.locator(".msg-assistant[data-done]")
    answer.wait_for()
    assert answer.locator(".error").count() == 0
    assert int(answer.get_attribute("data-chunks")) > 1  # arrived in pieces, through the stream reader
    assert answer.locator(".content").text_content() == expected  # greedy: the same text as unstreamed
    assert answer.get_attribute("data-finish") in ("stop", "length")

    page.locator("#classify-input").fill("abxcd")
    page.locator("#classify-button").click()
    page.locator("#classify-result .prob-row").first.wait_for()
    shown = {row.get_attribute("data-label"): float(row.get_attribute("data-probability"))
             for row in page.locator("#classify-result .prob-row").all()}  # fmt: skip
    classifier = next(name for name, m in models.items() if m.get("kind") == "classifier")
    _, answer_json = post(f"{served.url}/v1/classify", {"model": classifier, "input": "abxcd"})
    assert shown == pytest.approx(answer_json["data"][0]["probabilities"], abs=1e-9)
    assert sum(shown.values()) == pytest.approx(1.0, abs=1e-5)
    screenshot(page, "playground")

    page.goto(f"{served.url}/#/runs")  # the same server shows the runs too
    page.locator('.runs-table tr[data-name="cls"]').wait_for()


def test_dashboard_proxies_the_api_of_another_server(served: ServerThread, runs: Path) -> None:
    with ServerThread(create_dashboard_app(runs, api_base=served.url + "/")) as dashboard:
        assert model_ids(dashboard.url).keys() == model_ids(served.url).keys()
        lm = next(name for name, m in model_ids(served.url).items() if m.get("kind") != "classifier")
        direct = sse_chunks(f"{served.url}/v1/chat/completions", {**CHAT, "model": lm})
        proxied = sse_chunks(f"{dashboard.url}/v1/chat/completions", {**CHAT, "model": lm})
        text = ["".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
                for chunks in (direct, proxied)]  # fmt: skip
        assert text[0] and text[0] == text[1] and len(proxied) > 2
        status, body = post(f"{dashboard.url}/v1/chat/completions", {**CHAT, "model": "nope"})
        assert status == 404 and "nope" in error_message(body)  # the server's own error, passed through


def test_proxy_to_nothing_says_so(runs: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ServerThread(create_dashboard_app(runs, api_base=f"http://127.0.0.1:{port}")) as dashboard:
        status, body = get(f"{dashboard.url}/v1/models")
        assert status == 502 and f"cannot reach the model server at http://127.0.0.1:{port}" in error_message(body)
