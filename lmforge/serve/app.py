"""The FastAPI app of `lmforge serve`: OpenAI's completions, chat completions and models routes, a classify
route, health and Prometheus metrics, and the dashboard (lmforge/serve/dashboard.py) when installed.

    app = create_app(model="runs/shk")                # loads the model; or create_app(cfg) with a Config
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes (with API keys configured, /v1/* needs `Authorization: Bearer <key>`):
    GET  /v1/models                 the served models (id, context length)
    POST /v1/completions            prompt(s) -> text; stream=true sends server-sent events, then [DONE]
    POST /v1/chat/completions       messages -> a reply, through the tokenizer's chat template
    POST /v1/classify               {"model", "input": text or texts} -> label and probability per class
    GET  /health                    200 {"status": "ok", ...}; 503 while shutting down or without an engine
    GET  /metrics                   Prometheus text format

Every error is OpenAI's body {"error": {"message", "type", "param", "code"}}: 400 bad parameters or a prompt
too long for the context, 401 API key, 404 unknown model or route, 413 body too large, 422 malformed body,
429 queue full, 503 shutting down; an unexpected failure is a 500 with no detail (the log has it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.errors import LmforgeError
from lmforge.infer.generate import SamplingParams, StreamEvent, encode_prompts
from lmforge.serve.batching import Engine, EngineClosed, EngineFull, Failure, Generation
from lmforge.serve.metrics import MetricsMiddleware, ServerMetrics
from lmforge.serve.protocol import (
    APIError,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    error_body,
    new_id,
    now,
)
from lmforge.serve.security import BodyLimitMiddleware, KeyChecker, load_api_keys

if TYPE_CHECKING:
    from lmforge.config import Config, ServeConfig
    from lmforge.serve.backends import Classifier, LanguageModel, Served

log = logging.getLogger("lmforge")

MAX_CLASSIFY_INPUTS = 256
MAX_STOP_STRINGS = 16


# ---------------------------------------------------------------------------------------------------------
# Server state
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    settings: ServeConfig
    served: Served
    keys: KeyChecker
    runs_dir: Path
    engine: Engine | None = None
    closing: bool = False
    started: int = field(default_factory=now)
    metrics: ServerMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(lambda: self.engine.stats() if self.engine is not None else None)

    def lm_for(self, name: str) -> LanguageModel:
        lm = self.served.lm
        if lm is None or name != lm.name:
            raise _unknown_model(name, self.served.names(), "a language model")
        if self.engine is None or self.closing:
            raise APIError(503, "the server is shutting down" if self.closing else "the engine is not running",
                           type="server_error", code="unavailable")  # fmt: skip
        return lm

    def classifier_for(self, name: str) -> Classifier:
        clf = self.served.classifier
        if clf is None or name != clf.name:
            raise _unknown_model(name, self.served.names(), "a classifier")
        return clf


def _unknown_model(name: str, served: list[str], what: str) -> APIError:
    listing = ", ".join(repr(n) for n in served) or "none"
    return APIError(404, f"the model {name!r} does not exist or is not {what} here (served: {listing})",
                    param="model", code="model_not_found")  # fmt: skip


class Run:
    """The generations of one request and their events, on the event loop's side."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: asyncio.Queue[tuple[int, StreamEvent | Failure]] = asyncio.Queue()
        self.generations: list[Generation] = []
        self.open = 0  # generations without their last event yet

    def add(self, prompt_ids: list[int], params: SamplingParams, eos_ids: set[int]) -> None:
        index = len(self.generations)
        gen = self.engine.sequence(prompt_ids, params, eos_ids,
                                   lambda event: self.queue.put_nowait((index, event)))  # fmt: skip
        self.generations.append(gen)
        self.open += 1

    def submit(self) -> None:
        try:
            self.engine.submit(self.generations)
        except EngineFull as exc:
            raise APIError(429, str(exc), type="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"}) from None  # fmt: skip
        except EngineClosed as exc:
            raise APIError(503, str(exc), type="server_error", code="unavailable") from None

    async def events(self) -> AsyncIterator[tuple[int, StreamEvent | Failure]]:
        while self.open:
            index, event = await self.queue.get()
            if isinstance(event, Failure) or event.finish_reason is not None:
                self.open -= 1
            yield index, event

    def cancel(self) -> None:
        for gen in self.generations:
            self.engine.cancel(gen)


def _dispatch(events: list[tuple[Generation, Any]]) -> None:
    """On the event loop: hand each event of an engine step to its request."""
    for gen, event in events:
        gen.sink(event)


# ---------------------------------------------------------------------------------------------------------
# Requests to generations
# ---------------------------------------------------------------------------------------------------------


def _stop_strings(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise APIError(400, f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}", param="stop")
    if any(not s for s in stops):
        raise APIError(400, "a stop string cannot be empty", param="stop")
    return stops


def _refuse_unsupported(body: CompletionRequest | ChatRequest) -> None:
    checks: list[tuple[str, bool]] = [
        ("presence_penalty", body.presence_penalty != 0),
        ("frequency_penalty", body.frequency_penalty != 0),
        ("logit_bias", bool(body.logit_bias)),
        ("logprobs", bool(body.logprobs)),
    ]
    if isinstance(body, CompletionRequest):
        checks += [("echo", body.echo), ("suffix", bool(body.suffix)),
                   ("best_of", body.best_of is not None and body.best_of != body.n)]  # fmt: skip
    else:
        checks += [("top_logprobs", bool(body.top_logprobs)), ("tools", bool(body.tools)),
                   ("response_format", bool(body.response_format) and body.response_format.get("type") != "text")]  # fmt: skip
    for name, used in checks:
        if used:
            raise APIError(400, f"{name} is not supported by this server", param=name, code="unsupported_parameter")


def _check_prompt(ids: list[int], lm: LanguageModel, param: str) -> None:
    if not ids:
        raise APIError(400, "the prompt is empty", param=param)
    bad = next((t for t in ids if not 0 <= t < lm.vocab_size), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside the vocabulary (0..{lm.vocab_size - 1})", param=param)
    if len(ids) >= lm.block_size:
        raise APIError(400, f"this model's maximum context length is {lm.block_size} tokens; the prompt has "
                       f"{len(ids)} tokens, which leaves no room to generate", param=param,
                       code="context_length_exceeded")  # fmt: skip


def _max_new_tokens(requested: int | None, prompt_tokens: int, lm: LanguageModel, sc: ServeConfig,
                    param: str) -> int:  # fmt: skip
    """The tokens to generate: requested (400 if over the limit or past the context), else the default cut
    to the room the prompt leaves."""
    room = lm.block_size - prompt_tokens
    if requested is None:
        return max(1, min(sc.default_max_tokens, room))
    limit = sc.max_tokens_limit
    if limit is not None and requested > limit:
        raise APIError(400, f"{param} is {requested}; this server allows at most {limit}", param=param)
    if requested > room:
        raise APIError(400, f"this model's maximum context length is {lm.block_size} tokens; you requested "
                       f"{prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, {requested} for the "
                       f"completion)", param=param, code="context_length_exceeded")  # fmt: skip
    return requested


def _sampling(body: CompletionRequest | ChatRequest, max_new: int, stop: list[str], stop_ids: list[int],
              choice: int) -> SamplingParams:  # fmt: skip
    # n > 1 with a seed: each choice its own stream (seed + choice), all reproducible.
    seed = None if body.seed is None else (body.seed + choice) % 2**64
    try:
        return SamplingParams(max_new_tokens=max_new, temperature=body.temperature, top_k=body.top_k,
                              top_p=body.top_p, min_p=body.min_p, repetition_penalty=body.repetition_penalty,
                              stop=stop, stop_token_ids=stop_ids, seed=seed, ignore_eos=body.ignore_eos)  # fmt: skip
    except LmforgeError as exc:
        raise APIError(400, str(exc).replace("generate.", "")) from None


def _eos_ids(lm: LanguageModel) -> set[int]:
    return {lm.eos_id} if lm.eos_id is not None else set()


def _usage(run: Run) -> dict[str, int]:
    prompt = sum(len(g.prompt_ids) for g in run.generations)
    completion = sum(len(g.token_ids) for g in run.generations)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


class EventStream(StreamingResponse):
    """Server-sent events whose request's generations are cancelled however the response ends (finished,
    client gone, error), so a client that disconnects frees its rows at once."""

    def __init__(self, content: AsyncIterator[str], run: Run) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        self.run = run

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.cancel()


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _collect(run: Run, request: Request, state: ServerState, route: str) -> bool:
    """Wait for every generation of a non-streamed request; False (and cancelled) if the client left."""

    async def drain() -> None:
        first = True
        async for _, event in run.events():
            if first:
                state.metrics.ttft.labels(route).observe(time.perf_counter() - run.generations[0].submitted_at)
                first = False
            if isinstance(event, Failure):
                raise APIError(500, event.message, type="server_error")

    finished, gone = asyncio.ensure_future(drain()), asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({finished, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        client_left = not finished.done()
        if client_left:
            finished.cancel()
            run.cancel()
    if client_left:
        return False
    finished.result()  # raises a failure
    return True


# ---------------------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------------------


def create_app(config: ServeConfig | Config | None = None, *, served: Served | None = None,
               **overrides: Any) -> FastAPI:  # fmt: skip
    """The server app. `config`: a ServeConfig or a whole Config (its serve: section, and dashboard: for the
    dashboard); `overrides`: ServeConfig fields (model=..., runs_dir=..., max_batch_size=...).
    `served`: models already loaded (else loaded from serve.model / serve.classifier). The engine thread
    starts and stops with the app's lifespan (uvicorn runs it; so does `with TestClient(app)`)."""
    from lmforge.config import Config, ServeConfig

    root = config if isinstance(config, Config) else None
    sc = root.serve if root is not None else config if config is not None else ServeConfig()
    try:
        sc = dataclasses.replace(sc, **overrides)
    except TypeError as exc:
        raise LmforgeError(f"create_app: {exc}") from None
    if served is None:
        from lmforge.serve.backends import Served, load_served

        served = load_served(sc) if (sc.model or sc.classifier) else Served()
    runs_dir = Path(sc.runs_dir or (root.dashboard.runs_dir if root is not None else None)
                    or (root.run.runs_dir if root is not None else "runs"))  # fmt: skip
    state = ServerState(sc, served, KeyChecker(load_api_keys(sc.api_keys_env, sc.api_keys_file)), runs_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        state.closing = False
        if served.lm is not None:
            state.engine = Engine(
                served.lm.make_decoder(sc.max_batch_size), served.lm.tokenizer, max_batch_size=sc.max_batch_size,
                max_queue=sc.max_queue, max_prefill_tokens=sc.max_prefill_tokens,
                notify=lambda events: loop.call_soon_threadsafe(_dispatch, events),
            ).start()  # fmt: skip
        try:
            yield
        finally:
            state.closing = True
            if state.engine is not None:
                finished = await asyncio.to_thread(state.engine.stop, sc.shutdown_timeout)
                if not finished:
                    log.warning("serve: shut down with requests still generating after %.0f s", sc.shutdown_timeout)

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.lmforge = state
    _add_error_handlers(app)

    async def require_key(request: Request) -> None:
        state.keys.check(request.headers.get("authorization"))

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])
    _add_v1_routes(v1, state)
    app.include_router(v1)
    _add_service_routes(app, state)
    if sc.dashboard:
        _mount_dashboard(app, runs_dir, root)
    app.add_middleware(BodyLimitMiddleware, limit=sc.max_body_bytes)
    known = {getattr(r, "path", "") for r in app.routes}
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, known_paths=lambda: known)
    return app


def _mount_dashboard(app: FastAPI, runs_dir: Path, root: Config | None) -> None:
    """The dashboard and playground, same-origin, when lmforge/serve/dashboard.py is there."""
    import importlib.util

    if importlib.util.find_spec("lmforge.serve.dashboard") is None:
        return
    try:
        from lmforge.serve import dashboard
    except ImportError as exc:
        log.warning("serve: the dashboard could not be loaded (%s); serving the API only", exc)
        return
    if hasattr(dashboard, "mount_dashboard"):
        dashboard.mount_dashboard(app, runs_dir)
        return
    options: dict[str, Any] = {}
    if root is not None:
        options = {"stale_seconds": root.dashboard.stale_seconds, "explain": root.dashboard.explain}
    try:
        router = dashboard.dashboard_router(runs_dir, **options)
    except TypeError:  # an older signature: runs_dir only
        router = dashboard.dashboard_router(runs_dir)
    app.include_router(router)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(exc.errors())
        return JSONResponse(error_body(message, param=param, code="invalid_body"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(message, code=code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))  # fmt: skip

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("serve: %s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal server error", type="server_error"), status_code=500)


def _describe_validation(errors: Sequence[Any]) -> tuple[str, str | None]:
    """One line for the first problem of a malformed body, and the parameter it is about."""
    if not errors:
        return "malformed request body", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "missing" and not loc:
        return "the request needs a JSON body", None
    # Union members add their type to the location (prompt.str, prompt.list[int]): keep the field path.
    path = ".".join(p for p in loc if not any(c in p for c in "[]") and p not in ("str", "int", "float", "bool"))
    msg = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        msg = "unknown parameter"
    return (f"{path}: {msg}" if path else msg), (path.split(".")[0] if path else None)


def _add_service_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        stats = state.engine.stats() if state.engine is not None else None
        body: dict[str, Any] = {"status": "ok", "models": state.served.names()}
        if stats is not None:
            body.update(running=stats.running, waiting=stats.waiting)
        status = 200
        if state.closing:
            body["status"], status = "shutting_down", 503
        elif state.served.lm is not None and (stats is None or not stats.alive):
            body["status"], status = "engine_down", 503
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _add_v1_routes(router: APIRouter, state: ServerState) -> None:
    sc = state.settings

    def model_card(name: str, kind: str, context: int) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": state.started, "owned_by": "lmforge",
                "kind": kind, "max_model_len": context}  # fmt: skip

    def cards() -> list[dict[str, Any]]:
        out = []
        if state.served.lm is not None:
            lm = state.served.lm
            out.append(model_card(lm.name, lm.kind, lm.block_size))
        if state.served.classifier is not None:
            clf = state.served.classifier
            out.append({**model_card(clf.name, "classifier", clf.block_size), "labels": clf.labels})
        return out

    @router.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": cards()}

    @router.get("/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        for card in cards():
            if card["id"] == name:
                return card
        raise _unknown_model(name, state.served.names(), "a model")

    @router.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response | dict[str, Any]:
        lm = state.lm_for(body.model)
        _refuse_unsupported(body)
        prompts = _completion_prompts(body.prompt, lm)
        if len(prompts) * body.n > sc.max_n:
            raise APIError(400, f"{len(prompts)} prompts x n={body.n} choices exceed this server's limit of "
                           f"{sc.max_n} (serve.max_n)", param="n")  # fmt: skip
        stop = _stop_strings(body.stop)
        assert state.engine is not None
        run = Run(state.engine)
        for ids in prompts:
            max_new = _max_new_tokens(body.max_tokens, len(ids), lm, sc, "max_tokens")
            for choice in range(body.n):
                run.add(ids, _sampling(body, max_new, stop, [], choice), _eos_ids(lm))
        run.submit()
        head = {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": lm.name}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventStream(_stream_completion(run, head, include_usage, state), run)
        if not await _collect(run, request, state, "/v1/completions"):
            return Response(status_code=499)
        choices = [{"index": i, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}
                   for i, g in enumerate(run.generations)]  # fmt: skip
        return {**head, "choices": choices, "usage": _usage(run)}

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> Response | dict[str, Any]:
        lm = state.lm_for(body.model)
        _refuse_unsupported(body)
        if body.n > sc.max_n:
            raise APIError(400, f"n={body.n} exceeds this server's limit of {sc.max_n} (serve.max_n)", param="n")
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise APIError(400, "give max_tokens or max_completion_tokens, not both", param="max_tokens")
        fmt = lm.chat_format
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]  # fmt: skip
        try:
            text = fmt.render(messages)
        except LmforgeError as exc:
            raise APIError(400, str(exc), param="messages") from None
        # The template writes any BOS itself (as transformers does): special tokens only without one.
        ids = lm.tokenizer.encode(text, add_special_tokens=not fmt.has_template).ids
        _check_prompt(ids, lm, "messages")
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_new = _max_new_tokens(body.max_completion_tokens or body.max_tokens, len(ids), lm, sc, param)
        stop = [*_stop_strings(body.stop), *fmt.stop]
        assert state.engine is not None
        run = Run(state.engine)
        for choice in range(body.n):
            run.add(ids, _sampling(body, max_new, stop, fmt.stop_token_ids, choice), _eos_ids(lm))
        run.submit()
        head = {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": lm.name}
        strip = not fmt.has_template  # the plain "Assistant:" format: the reply's leading space is not content
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventStream(_stream_chat(run, head, include_usage, strip, state), run)
        if not await _collect(run, request, state, "/v1/chat/completions"):
            return Response(status_code=499)
        choices = [{"index": i, "message": {"role": "assistant", "content": g.text.lstrip(" ") if strip else g.text},
                    "logprobs": None, "finish_reason": g.finish_reason}
                   for i, g in enumerate(run.generations)]  # fmt: skip
        return {**head, "choices": choices, "usage": _usage(run)}

    @router.post("/classify")
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        clf = state.classifier_for(body.model)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise APIError(400, "input is empty", param="input")
        if len(texts) > MAX_CLASSIFY_INPUTS:
            raise APIError(400, f"at most {MAX_CLASSIFY_INPUTS} inputs per request, got {len(texts)}", param="input")
        if any(not t for t in texts):
            raise APIError(400, "an input text is empty", param="input")
        encoded = clf.encode(texts)
        probabilities = await asyncio.to_thread(clf.probabilities, encoded)
        data = []
        for i, probs in enumerate(probabilities):
            best = max(range(len(probs)), key=probs.__getitem__)
            data.append({"index": i, "label": clf.labels[best],
                         "probabilities": dict(zip(clf.labels, probs))})  # fmt: skip
        tokens = sum(len(ids) for ids in encoded)
        return {"id": new_id("clf"), "object": "list", "created": now(), "model": clf.name, "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


def _completion_prompts(prompt: str | list[str] | list[int] | list[list[int]], lm: LanguageModel) -> list[list[int]]:
    if isinstance(prompt, list) and not prompt:
        raise APIError(400, "the prompt is empty", param="prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and isinstance(prompt[0], int)):
        batch: list[Any] = [prompt]
    else:
        batch = list(prompt)
    for p in batch:
        if isinstance(p, str) and not p:
            raise APIError(400, "the prompt is empty", param="prompt")
    try:
        encoded = encode_prompts(lm.tokenizer, batch)
    except LmforgeError as exc:
        raise APIError(400, str(exc), param="prompt") from None
    for ids in encoded:
        _check_prompt(ids, lm, "prompt")
    return encoded


async def _stream_events(run: Run, state: ServerState, route: str,
                         render: Callable[[int, StreamEvent], dict[str, Any] | None],
                         tail: Callable[[], list[dict[str, Any]]]) -> AsyncIterator[str]:  # fmt: skip
    first = True
    async for index, event in run.events():
        if isinstance(event, Failure):
            yield _sse(error_body(event.message, type="server_error"))
            break
        if first:
            state.metrics.ttft.labels(route).observe(time.perf_counter() - run.generations[0].submitted_at)
            first = False
        chunk = render(index, event)
        if chunk is not None:
            yield _sse(chunk)
    else:
        for chunk in tail():
            yield _sse(chunk)
    yield "data: [DONE]\n\n"


def _stream_completion(run: Run, head: dict[str, Any], include_usage: bool, state: ServerState) -> AsyncIterator[str]:
    def render(index: int, event: StreamEvent) -> dict[str, Any] | None:
        if not event.text and event.finish_reason is None:
            return None
        choice = {"index": index, "text": event.text, "logprobs": None, "finish_reason": event.finish_reason}
        return {**head, "choices": [choice]}

    def tail() -> list[dict[str, Any]]:
        return [{**head, "choices": [], "usage": _usage(run)}] if include_usage else []

    return _stream_events(run, state, "/v1/completions", render, tail)


def _stream_chat(run: Run, head: dict[str, Any], include_usage: bool, strip: bool,
                 state: ServerState) -> AsyncIterator[str]:  # fmt: skip
    head = {**head, "object": "chat.completion.chunk"}
    started: set[int] = set()  # choices whose role chunk went out
    content_started: set[int] = set()  # choices with content (leading spaces stripped until then)

    def render(index: int, event: StreamEvent) -> dict[str, Any] | None:
        delta: dict[str, Any] = {}
        if index not in started:
            started.add(index)
            delta["role"] = "assistant"
        text = event.text
        if strip and index not in content_started:
            text = text.lstrip(" ")
        if text:
            content_started.add(index)
            delta["content"] = text
        if not delta and event.finish_reason is None:
            return None
        if "role" in delta and "content" not in delta:
            delta["content"] = ""
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": event.finish_reason}
        return {**head, "choices": [choice]}

    def tail() -> list[dict[str, Any]]:
        return [{**head, "choices": [], "usage": _usage(run)}] if include_usage else []

    return _stream_events(run, state, "/v1/chat/completions", render, tail)
