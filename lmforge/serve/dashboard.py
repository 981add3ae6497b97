"""The web dashboard and playground: one static page (lmforge/serve/static/) over a small JSON API.

`dashboard_router(runs_dir)` is a FastAPI `APIRouter` that `lmforge serve` includes (so the page, its API
and the OpenAI-compatible `/v1/...` endpoints share one origin) and that `lmforge dashboard` serves alone:

- `GET /`, `/dashboard`: the page; `GET /static/{file}`: its CSS and JavaScript (no build step);
- `GET /api/runs`: every run under the runs directory: stage, status, final figures, lineage;
- `GET /api/run?name=N`: one run: manifest, config, metrics summary, evaluation report, explain result;
- `GET /api/metrics?name=N&offset=B&file=ID`: the metrics.jsonl records after byte `offset` (live curves
  poll this; `file` tells a replaced file, e.g. a resumed run's rewrite, from a grown one);
- `GET /api/file?name=N&path=P`: a file of a run (PNGs, report.md, logs);
- `GET /api/explain/models`, `POST /api/explain`: attention maps, logit lens and token attributions of a
  model in the runs directory, computed on demand (`lmforge.eval.explain`).

A run's status is derived from what is on disk: `finished` or `failed` as its manifest.json says (the
manifest is written only when a stage ends); without a manifest, `running` while its metrics or logs keep
changing, else `interrupted` (killed: nothing written for `stale_seconds`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

STATIC_DIR = Path(__file__).parent / "static"
RUN_MARKERS = ("manifest.json", "metrics.jsonl", "config.yaml")
NOT_RUNS = {"checkpoints", "tb", "logs", "__pycache__", "hf", "adapter"}
FILE_TYPES = {
    ".png": "image/png", ".svg": "image/svg+xml", ".json": "application/json", ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8", ".log": "text/plain; charset=utf-8", ".yaml": "text/plain; charset=utf-8",
    ".jsonl": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8",
}  # fmt: skip
# Config keys naming what a run was made from (besides the input files its manifest lists), for lineage.
CONFIG_SOURCES = (
    "train.data", "train.init_from", "finetune.base", "finetune.data", "finetune.val_data", "tokenizer.path",
    "tokenizer.inputs", "eval.model", "export.model", "export.base", "explain.model", "generate.model",
)  # fmt: skip
TAIL_BYTES = 256 * 1024  # the end of metrics.jsonl read for a run's final figures
MAX_METRICS_BYTES = 8 * 1024 * 1024  # one /api/metrics answer; the page asks again for the rest
EXPLAIN_MAX_TOKENS = 128  # a prompt's last tokens explained on the page (attention maps grow as tokens²)
MAX_DEPTH = 3  # runs nested this deep under the runs directory are found (runs/group/name/...)


# ---------------------------------------------------------------------------------------------------------
# Reading run directories
# ---------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def find_runs(root: Path) -> list[Path]:
    """Run directories under `root` (a directory holding a manifest, metrics or a resolved config)."""
    found: list[Path] = []

    def visit(directory: Path, depth: int) -> None:
        try:
            children = sorted(p for p in directory.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or child.name in NOT_RUNS:
                continue
            if any((child / marker).is_file() for marker in RUN_MARKERS):
                found.append(child)
            if depth < MAX_DEPTH:
                visit(child, depth + 1)

    visit(root, 1)
    return found


def _file_version(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _last_activity(run: Path) -> float:
    """The newest modification time among the files a running stage keeps touching."""
    paths = [run / "metrics.jsonl", run / "manifest.json", run / "config.yaml", run]
    logs = run / "logs"
    if logs.is_dir():
        paths += list(logs.glob("*.log"))
    times = []
    for path in paths:
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime)
    return max(times, default=0.0)


def _stage(run: Path, manifest: dict[str, Any] | None) -> str:
    if manifest and isinstance(manifest.get("stage"), str):
        return manifest["stage"]
    logs = sorted((run / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime) if (run / "logs").is_dir() else []
    return logs[-1].stem if logs else "unknown"


def run_status(run: Path, manifest: dict[str, Any] | None, stale_seconds: float, now: float) -> str:
    if manifest and manifest.get("status") in ("finished", "failed"):
        return manifest["status"]
    return "running" if now - _last_activity(run) < stale_seconds else "interrupted"


def read_tail_records(path: Path, tail_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """The complete JSON lines in the last `tail_bytes` of a jsonl file."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            start = max(0, size - tail_bytes)
            f.seek(start)
            data = f.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first line is cut
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def final_figures(run: Path, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The numbers a run ended (or is) at: the last train and eval events, a report's headline metrics."""
    figures: dict[str, Any] = {}
    last_train = last_eval = None
    for record in read_tail_records(run / "metrics.jsonl"):
        if record.get("event") == "train":
            last_train = record
        elif record.get("event") == "eval":
            last_eval = record
    if last_train:
        for key in ("step", "loss", "lr", "tokens", "tok_per_s"):
            if key in last_train:
                figures[key] = last_train[key]
    if last_eval:
        figures.update({k: v for k, v in last_eval.items() if k not in ("event",) and _scalar(v)})
    report = _read_json(run / "report.json")
    if isinstance(report, dict) and isinstance(report.get("tasks"), dict):
        for task, result in report["tasks"].items():
            for key, value in (result.get("metrics") or {}).items():
                if _scalar(value):
                    figures[f"{task}.{key}"] = value
    summary = (manifest or {}).get("summary")
    if isinstance(summary, dict):
        for key in ("best_val", "best_step", "stop_reason", "steps"):
            if _scalar(summary.get(key)) and key not in figures:
                figures[key] = summary[key]
    return figures


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) and not (isinstance(value, str) and len(value) > 80)


class RunIndex:
    """The runs under a directory, read fresh on each call (a run directory is small to look at)."""

    def __init__(self, root: Path, stale_seconds: float = 300.0) -> None:
        self.root = root
        self.stale_seconds = stale_seconds
        self._cache: dict[tuple[str, Path], tuple[tuple[Any, ...], Any]] = {}

    def cached(self, kind: str, path: Path, load: Any, also: tuple[Path, ...] = ()) -> Any:
        """load(path), again only once it (or a file in `also`) changed: the page polls every second."""
        version = tuple(_file_version(f) for f in (path, *also))
        hit = self._cache.get((kind, path))
        if hit is not None and hit[0] == version:
            return hit[1]
        value = load(path)
        self._cache[(kind, path)] = (version, value)
        return value

    def name_of(self, run: Path) -> str:
        return run.relative_to(self.root).as_posix()

    def resolve(self, name: str) -> Path:
        """The run directory called `name`; 404 for anything else (never a path outside the runs dir)."""
        if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in name.split("/")):
            raise HTTPException(404, f"no run named {name!r}")
        run = (self.root / name).resolve()
        if not run.is_relative_to(self.root.resolve()) or not any((run / m).is_file() for m in RUN_MARKERS):
            raise HTTPException(404, f"no run named {name!r} in {self.root}")
        return run

    def summaries(self) -> list[dict[str, Any]]:
        now = time.time()
        runs = find_runs(self.root)
        manifests = {run: self.cached("json", run / "manifest.json", _read_json) for run in runs}
        manifests = {run: m if isinstance(m, dict) else None for run, m in manifests.items()}
        lineage = self._lineage(runs, manifests)
        out = []
        for run in runs:
            manifest = manifests[run]
            out.append({
                "name": self.name_of(run),
                "stage": _stage(run, manifest),
                "status": run_status(run, manifest, self.stale_seconds, now),
                "started": (manifest or {}).get("started"),
                "seconds": (manifest or {}).get("seconds"),
                "updated": round(_last_activity(run), 3),
                "figures": self.cached("figures", run / "metrics.jsonl", lambda _, r=run, m=manifest: final_figures(r, m),
                                       also=(run / "manifest.json", run / "report.json")),
                "has_metrics": (run / "metrics.jsonl").is_file(),
                "has_report": (run / "report.json").is_file(),
                "has_explain": (run / "explain.json").is_file(),
                "model": model_kind(run),
                **lineage[run],
            })  # fmt: skip
        out.sort(key=lambda r: -r["updated"])
        return out

    def _lineage(self, runs: list[Path], manifests: dict[Path, dict[str, Any] | None]) -> dict[Path, dict]:
        """Parents: the runs this run was made from; children: the reverse. The sources are the input files
        its manifest lists and the paths its config names (a base model, shards, a model evaluated).

        An input path that exists here belongs to the run whose directory holds it (or to none); one that
        does not (recorded relative to another working directory, or moved) is matched by its sha256 to the
        one run that wrote a file with that content (copies, such as a tokenizer.json in many runs, match
        nothing)."""
        made_by: dict[str, set[Path]] = {}
        for run, manifest in manifests.items():
            for output in (manifest or {}).get("outputs") or []:
                if isinstance(output, dict) and isinstance(output.get("sha256"), str):
                    made_by.setdefault(output["sha256"], set()).add(run)
        resolved = {run.resolve(): run for run in runs}
        parents: dict[Path, set[Path]] = {run: set() for run in runs}
        for run, manifest in manifests.items():
            for entry in (manifest or {}).get("inputs") or []:
                if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                    continue
                if Path(entry["path"]).exists():
                    parent = _containing_run(entry["path"], resolved)
                else:
                    producers = made_by.get(entry.get("sha256", ""), set())
                    parent = next(iter(producers)) if len(producers) == 1 else None
                if parent is not None and parent != run:
                    parents[run].add(parent)
            for path in self.cached("sources", run / "config.yaml", _config_paths):
                parent = _containing_run(path, resolved)
                if parent is not None and parent != run:
                    parents[run].add(parent)
        lineage = {run: {"parents": sorted(self.name_of(p) for p in parents[run]), "children": []} for run in runs}
        for run in runs:
            for parent in parents[run]:
                lineage[parent]["children"].append(self.name_of(run))
        for entry in lineage.values():
            entry["children"].sort()
        return lineage

    def detail(self, name: str) -> dict[str, Any]:
        run = self.resolve(name)
        summary = next((s for s in self.summaries() if s["name"] == name), None)
        if summary is None:
            raise HTTPException(404, f"no run named {name!r}")
        config = run / "config.yaml"
        samples = [r for r in read_tail_records(run / "metrics.jsonl") if r.get("event") == "sample"][-5:]
        files = sorted(
            p.relative_to(run).as_posix()
            for pattern in ("*.png", "*.md", "*.html", "logs/*.log")
            for p in run.glob(pattern)
            if not p.name.startswith(".")
        )
        return {
            **summary,
            "manifest": _read_json(run / "manifest.json"),
            "config": config.read_text(encoding="utf-8", errors="replace") if config.is_file() else None,
            "report": _read_json(run / "report.json"),
            "explain": _read_json(run / "explain.json"),
            "finetune_report": _read_json(run / "finetune_report.json"),
            "samples": samples,
            "files": files,
        }


def _config_paths(config_file: Path) -> list[str]:
    """The paths a run's resolved config names as its sources (a base model, shards, a model to evaluate)."""
    import yaml

    try:
        tree = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return []
    found: list[str] = []
    for key in CONFIG_SOURCES:
        node: Any = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        for value in node if isinstance(node, list) else [node]:
            if isinstance(value, str) and value:
                found.append(value)
    return found


def _containing_run(path: str, runs: dict[Path, Path]) -> Path | None:
    """The run whose directory holds `path` (an input as the manifest recorded it), if any."""
    with contextlib.suppress(OSError, ValueError):
        p = Path(path).resolve()
        for parent in (p, *p.parents):
            if parent in runs:
                return runs[parent]
    return None


def model_kind(run: Path) -> str | None:
    """'classifier' or 'lm' if the run holds a model checkpoint (or is one), else None."""
    for ckpt in (run, *sorted((run / "checkpoints").glob("step-*"))):
        if (ckpt / "classifier_config.json").is_file():
            return "classifier"
    if (run / "model_config.json").is_file() or any((run / "checkpoints").glob("step-*/model_config.json")):
        return "lm"
    if (run / "config.json").is_file() and any(run.glob("*.safetensors")):
        return "lm"  # a Hugging Face export
    return None


def read_metrics(path: Path, offset: int, file_id: str | None, limit: int = MAX_METRICS_BYTES) -> dict[str, Any]:
    """The complete records after byte `offset`, and where to continue. A different `file_id` (the file was
    replaced: a new run in the same directory, or a resume that rewrote it) or a shorter file starts over."""
    try:
        stat = path.stat()
    except OSError:
        return {"records": [], "offset": 0, "file": None, "reset": offset > 0, "more": False}
    current = f"{stat.st_dev}-{stat.st_ino}"
    reset = (file_id is not None and file_id != current) or offset > stat.st_size
    if reset:
        offset = 0
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(limit)
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
    records = []
    for line in data[:end].split(b"\n"):
        if line.strip():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
    return {"records": records, "offset": offset + end, "file": current, "reset": reset,
            "more": offset + len(data) < stat.st_size}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Explain on demand
# ---------------------------------------------------------------------------------------------------------


class ExplainCache:
    """Models loaded for the explain view, the two most recent kept; one explanation at a time (attention
    layers carry a flag while they keep their weights)."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.models: OrderedDict[tuple[str, float], Any] = OrderedDict()
        self.lock = threading.Lock()

    def explain(self, run: Path, text: str, methods: list[str], target: str | None) -> dict[str, Any]:
        from lmforge.config import ExplainConfig
        from lmforge.eval.explain import explain_text, load_explainable

        with self.lock:
            key = (str(run), _last_activity(run))
            if key not in self.models:
                self.models[key] = load_explainable(run)
                while len(self.models) > self.size:
                    self.models.popitem(last=False)
            self.models.move_to_end(key)
            config = ExplainConfig(target=target, max_tokens=EXPLAIN_MAX_TOKENS)
            return explain_text(self.models[key], text, config, methods)


# ---------------------------------------------------------------------------------------------------------
# The router and the stand-alone app
# ---------------------------------------------------------------------------------------------------------


def _page() -> HTMLResponse:
    return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})


def dashboard_router(runs_dir: str | Path, stale_seconds: float = 300.0, explain: bool = True) -> APIRouter:
    """The dashboard page, its static files and its JSON API over the runs in `runs_dir`."""
    index = RunIndex(Path(runs_dir), stale_seconds)
    explainer = ExplainCache()
    router = APIRouter()

    router.add_api_route("/", _page, methods=["GET"], include_in_schema=False)
    router.add_api_route("/dashboard", _page, methods=["GET"], include_in_schema=False)

    @router.get("/static/{path:path}", include_in_schema=False)
    def static(path: str) -> FileResponse:
        file = (STATIC_DIR / path).resolve()
        if not file.is_relative_to(STATIC_DIR.resolve()) or not file.is_file():
            raise HTTPException(404, f"no static file {path!r}")
        return FileResponse(file, headers={"Cache-Control": "no-cache"})

    @router.get("/api/runs")
    def runs() -> dict[str, Any]:
        return {"runs_dir": str(index.root), "runs": index.summaries(), "explain": explain}

    @router.get("/api/run")
    def run(name: Annotated[str, Query()]) -> dict[str, Any]:
        return index.detail(name)

    @router.get("/api/metrics")
    def metrics(name: Annotated[str, Query()], offset: Annotated[int, Query(ge=0)] = 0,
                file: str | None = None) -> dict[str, Any]:
        return read_metrics(index.resolve(name) / "metrics.jsonl", offset, file)

    @router.get("/api/file")
    def run_file(name: Annotated[str, Query()], path: Annotated[str, Query()]) -> FileResponse:
        run_dir = index.resolve(name)
        file = (run_dir / path).resolve()
        if not file.is_relative_to(run_dir) or not file.is_file() or file.suffix not in FILE_TYPES:
            raise HTTPException(404, f"run {name!r} has no file {path!r} to show")
        # A page from a run directory must not act as the dashboard's own origin: sandbox it.
        headers = {"Content-Security-Policy": "sandbox"} if file.suffix == ".html" else {}
        return FileResponse(file, media_type=FILE_TYPES[file.suffix], headers=headers)

    @router.get("/api/explain/models")
    def explain_models() -> dict[str, Any]:
        models = [{"name": s["name"], "kind": s["model"], "status": s["status"]}
                  for s in index.summaries() if s["model"]]  # fmt: skip
        return {"enabled": explain, "models": models}

    @router.post("/api/explain")
    def explain_run(request: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        from lmforge.errors import LmforgeError

        if not explain:
            raise HTTPException(403, "the explain view is switched off (dashboard.explain=false)")
        name, text = request.get("name"), request.get("text")
        methods = request.get("methods") or []
        if not isinstance(name, str) or not isinstance(text, str) or not text.strip():
            raise HTTPException(400, "give a model run 'name' and a non-empty 'text'")
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            raise HTTPException(400, "'methods' must be a list of method names")
        run_dir = index.resolve(name)
        try:
            return explainer.explain(run_dir, text, methods, request.get("target"))
        except LmforgeError as exc:
            raise HTTPException(400, str(exc)) from None

    return router


def mount_proxy(app: FastAPI, api_base: str) -> None:
    """Forward `/v1/...` to an `lmforge serve` at `api_base`, streaming, so the playground stays same-origin."""
    import httpx
    from starlette.background import BackgroundTask
    from starlette.responses import StreamingResponse

    base = api_base.rstrip("/")

    async def proxy(path: str, request: Request) -> Response:
        client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept", "authorization")}
        outgoing = client.build_request(request.method, f"{base}/v1/{path}", params=request.query_params,
                                        headers=headers, content=await request.body())  # fmt: skip
        try:
            upstream = await client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            await client.aclose()
            message = f"cannot reach the model server at {base} ({type(exc).__name__})"
            return JSONResponse({"error": {"message": message}}, status_code=502)

        async def close() -> None:
            await upstream.aclose()
            await client.aclose()

        kept = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "cache-control")}
        return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code, headers=kept,
                                 background=BackgroundTask(close))  # fmt: skip

    app.add_api_route("/v1/{path:path}", proxy, methods=["GET", "POST"], include_in_schema=False)


def create_dashboard_app(runs_dir: str | Path, api_base: str | None = None, stale_seconds: float = 300.0,
                         explain: bool = True) -> FastAPI:  # fmt: skip
    """`lmforge dashboard`: the dashboard alone; the playground talks to `api_base` (proxied) if given."""
    app = FastAPI(title="lmforge dashboard", docs_url=None, redoc_url=None)
    app.include_router(dashboard_router(runs_dir, stale_seconds, explain))
    if api_base:
        mount_proxy(app, api_base)
    return app


def run_dashboard(cfg: Any) -> None:
    """Serve the dashboard until interrupted (`cfg` is the root Config)."""
    import uvicorn

    from lmforge.errors import ConfigError

    dc = cfg.dashboard
    runs_dir = Path(dc.runs_dir or cfg.run.runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"runs directory not found: {runs_dir} (pass --runs DIR)")
    if not 0 <= dc.port <= 65535:
        raise ConfigError(f"dashboard.port must be in 0..65535, got {dc.port}")
    if dc.api_base and not dc.api_base.startswith(("http://", "https://")):
        raise ConfigError(f"dashboard.api_base must be an http(s) URL, got {dc.api_base!r}")
    _check_port_free(dc.host, dc.port)
    app = create_dashboard_app(runs_dir, dc.api_base, dc.stale_seconds, dc.explain)
    config = uvicorn.Config(app, host=dc.host, port=dc.port, log_level="warning")
    server = uvicorn.Server(config)
    _announce_when_started(server, dc.host, runs_dir)
    server.run()


def _check_port_free(host: str, port: int) -> None:
    """One clear line instead of uvicorn's log and exit when the address is taken or not ours."""
    import socket

    from lmforge.errors import ConfigError

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"dashboard.host: cannot resolve {host!r} ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror} (choose another --port)") from None


def _announce_when_started(server: Any, host: str, runs_dir: Path) -> None:
    """Print the URL once the socket is bound (port 0 picks a free one), so scripts can read it."""
    import sys

    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets=sockets)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1]
            print(f"dashboard: http://{host}:{port}/ (runs in {runs_dir}; Ctrl-C stops)", file=sys.stderr, flush=True)

    server.startup = startup
