"""Raw HTTP against a real server: API keys (401), body limit (413), context and parameter limits (400),
malformed bodies (422), unknown models and routes (404), a full queue (429), shutting down (503), and a
client that disconnects mid-stream. Every error is OpenAI's JSON body, never a stack trace."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import ServerThread, scrape, sse_lines, wait_for

from lmforge.config import ServeConfig
from lmforge.serve.app import create_app
from lmforge.serve.backends import Served, load_served

KEY_ENV = "LMFORGE_TEST_SERVE_KEYS"
ENV_KEY, FILE_KEY = "sk-from-env-123", "sk-from-file-456"


def assert_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "Traceback" not in response.text
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


@pytest.fixture(scope="module")
def secured(tiny_served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# serving keys\n\n{FILE_KEY}\n", encoding="utf-8")
    os.environ[KEY_ENV] = f" {ENV_KEY} , "
    try:
        app = create_app(served=tiny_served, api_keys_env=KEY_ENV, api_keys_file=str(keys), max_body_bytes=2048,
                         max_tokens_limit=40, max_n=4, dashboard=False)  # fmt: skip
    finally:
        del os.environ[KEY_ENV]
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def http(secured: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured.url, headers={"Authorization": f"Bearer {FILE_KEY}"}, timeout=30) as c:
        yield c


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": "To be", "max_tokens": 8, "temperature": 0, **fields}


def test_api_keys(secured: ServerThread) -> None:
    url = f"{secured.url}/v1/completions"
    assert_error(httpx.post(url, json=completion()), 401, "invalid_api_key")
    denied = httpx.post(url, json=completion(), headers={"Authorization": "Bearer sk-wrong"})
    assert assert_error(denied, 401, "invalid_api_key")["message"] == "invalid API key"
    assert denied.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.get(f"{secured.url}/v1/models", headers={"Authorization": "Basic abc"}), 401)
    for key in (ENV_KEY, FILE_KEY):
        ok = httpx.post(url, json=completion(), headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1
    assert httpx.get(f"{secured.url}/health").status_code == 200  # health and metrics stay open
    assert httpx.get(f"{secured.url}/metrics").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{secured.url}/v1", api_key="sk-wrong", max_retries=0).models.list()
    models = openai.OpenAI(base_url=f"{secured.url}/v1", api_key=ENV_KEY, max_retries=0).models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_body_too_large(http: httpx.Client) -> None:
    big = completion(prompt="x" * 3000)
    assert_error(http.post("/v1/completions", json=big), 413, "request_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while it is read
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 500):
            yield payload[i : i + 500]

    assert_error(http.post("/v1/completions", content=chunked(), headers={"content-type": "application/json"}),
                 413, "request_too_large")  # fmt: skip
    assert http.post("/v1/completions", json=completion(prompt="x" * 30)).status_code == 200


def test_context_and_parameter_limits(http: httpx.Client) -> None:
    long_prompt = "To be, or not to be, that is the question. Whether 'tis nobler in"  # 66 chars > 64
    error = assert_error(http.post("/v1/completions", json=completion(prompt=long_prompt)), 400,
                         "context_length_exceeded", "prompt")  # fmt: skip
    assert "64" in error["message"]
    assert_error(http.post("/v1/completions", json=completion(prompt="To be, or not to be, that is the question",
                                                               max_tokens=30)),
                 400, "context_length_exceeded", "max_tokens")  # fmt: skip
    assert_error(http.post("/v1/completions", json=completion(max_tokens=41)), 400, param="max_tokens")  # the limit
    messages = [{"role": "user", "content": long_prompt}]
    assert_error(http.post("/v1/chat/completions", json={"model": "tiny", "messages": messages}), 400,
                 "context_length_exceeded", "messages")  # fmt: skip
    assert_error(http.post("/v1/completions", json=completion(n=5)), 400, param="n")
    assert_error(http.post("/v1/completions", json=completion(prompt="")), 400, param="prompt")
    assert_error(http.post("/v1/completions", json=completion(prompt=[1, 2, 99999])), 400, param="prompt")
    assert_error(http.post("/v1/completions", json=completion(logprobs=2)), 400, "unsupported_parameter", "logprobs")
    assert_error(http.post("/v1/completions", json=completion(presence_penalty=0.5)), 400, "unsupported_parameter")
    assert_error(http.post("/v1/completions", json=completion(stop=["a", ""])), 400, param="stop")


@pytest.mark.parametrize("body,param", [
    ({"model": "tiny"}, "prompt"),  # missing
    (completion(temperature="hot"), "temperature"),
    (completion(temperature=5), "temperature"),
    (completion(max_tokens=0), "max_tokens"),
    (completion(top_p=0), "top_p"),
    (completion(best_of_all=3), "best_of_all"),  # unknown parameters are refused, not ignored
    ({"model": "tiny", "messages": []}, "messages"),
])  # fmt: skip
def test_malformed_bodies(http: httpx.Client, body: dict, param: str) -> None:
    route = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    assert assert_error(http.post(route, json=body), 422, "invalid_body")["param"] == param


def test_not_json_and_no_body(http: httpx.Client) -> None:
    bad = http.post("/v1/completions", content=b'{"model": "tiny",', headers={"content-type": "application/json"})
    assert "not valid JSON" in assert_error(bad, 422)["message"]
    assert_error(http.post("/v1/completions"), 422)


def test_unknown_model_and_route(http: httpx.Client) -> None:
    error = assert_error(http.post("/v1/completions", json=completion(model="gpt-4")), 404, "model_not_found", "model")
    assert "'tiny'" in error["message"]  # names what is served
    assert_error(http.post("/v1/classify", json={"model": "tiny", "input": "x"}), 404, "model_not_found")
    assert_error(http.get("/v1/models/gpt-4"), 404, "model_not_found")
    assert_error(http.get("/v1/nothing-here"), 404, "not_found")
    assert_error(http.get("/v1/completions"), 405)


def test_shutting_down_is_503(tiny_served: Served) -> None:
    with ServerThread(create_app(served=tiny_served, dashboard=False)) as running:
        running.state.closing = True  # what the lifespan sets when shutdown begins
        assert_error(httpx.post(f"{running.url}/v1/completions", json=completion()), 503, "unavailable")
        health = httpx.get(f"{running.url}/health")
        assert health.status_code == 503 and health.json()["status"] == "shutting_down"


@pytest.fixture(scope="module")
def busy(long_run: Path) -> Iterator[ServerThread]:
    """One row and one queue place, over a model whose 1024-token context keeps a row busy."""
    served = load_served(ServeConfig(model=str(long_run)))
    with ServerThread(create_app(served=served, max_batch_size=1, max_queue=1, dashboard=False)) as running:
        yield running


def test_full_queue_is_429_and_disconnects_free_rows(busy: ServerThread) -> None:
    body = {"model": "long", "prompt": "To be", "max_tokens": 1000, "temperature": 0, "stream": True,
            "ignore_eos": True}  # fmt: skip
    with httpx.Client(base_url=busy.url, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json=body) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # (kept: dropping the iterator would close the connection)
            next(lines)  # running: it holds the only row
            with c.stream("POST", "/v1/completions", json=body) as second:
                assert second.status_code == 200  # accepted: it waits in the queue
                assert wait_for(lambda: scrape(busy.url)["lmforge_queue_depth"] == 1)
                third = httpx.post(f"{busy.url}/v1/completions", json={**body, "stream": False}, timeout=30)
                assert_error(third, 429, "rate_limit_exceeded")
                assert third.headers["retry-after"] == "1"
            # The queued client left: its place is free again, the first still runs.
            assert wait_for(lambda: scrape(busy.url)["lmforge_queue_depth"] == 0)
            metrics = scrape(busy.url)
            assert metrics["lmforge_running_batch_size"] == 1
        # The running client disconnected mid-stream: its row is freed long before 1000 tokens are done.
        assert wait_for(lambda: scrape(busy.url)["lmforge_running_batch_size"] == 0, timeout=5)
        metrics = scrape(busy.url)
        assert metrics['lmforge_sequences_total{outcome="cancelled"}'] == 2
        assert metrics['lmforge_sequences_total{outcome="rejected"}'] == 1
        assert metrics['lmforge_requests_total{method="POST",route="/v1/completions",status="429"}'] == 1
        assert metrics["lmforge_generated_tokens_total"] < 1000
        # And the server serves the next request whole.
        done = c.post("/v1/completions", json={**body, "max_tokens": 20})
        lines = sse_lines(done)
        assert lines[-1] == "[DONE]" and json.loads(lines[-2])["choices"][0]["finish_reason"] == "length"


def test_a_non_streamed_client_that_leaves_frees_its_row(busy: ServerThread) -> None:
    before = scrape(busy.url)
    body = {"model": "long", "prompt": "To be", "max_tokens": 1000, "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(f"{busy.url}/v1/completions", json=body, timeout=0.3)
    assert wait_for(lambda: scrape(busy.url)["lmforge_running_batch_size"] == 0, timeout=5)
    after = scrape(busy.url)
    cancelled = 'lmforge_sequences_total{outcome="cancelled"}'
    assert after[cancelled] == before[cancelled] + 1
    assert after["lmforge_generated_tokens_total"] - before["lmforge_generated_tokens_total"] < 1000
    assert wait_for(lambda: scrape(busy.url).get(
        'lmforge_requests_total{method="POST",route="/v1/completions",status="499"}') == 1)


def test_dashboard_is_served_same_origin(tiny_served: Served, runs: Path) -> None:
    if importlib.util.find_spec("lmforge.serve.dashboard") is None:
        pytest.skip("lmforge/serve/dashboard.py is not there")
    with ServerThread(create_app(served=tiny_served, runs_dir=str(runs))) as running:
        page = httpx.get(f"{running.url}/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        runs_listed = httpx.get(f"{running.url}/api/runs")
        assert runs_listed.status_code == 200
        assert str(runs) in runs_listed.text  # the runs directory it was given
        assert httpx.get(f"{running.url}/v1/models").json()["data"][0]["id"] == "tiny"
    with ServerThread(create_app(served=tiny_served, runs_dir=str(runs), dashboard=False)) as running:
        assert_error(httpx.get(f"{running.url}/"), 404)
