"""`scratchlm playground --runs DIR...`: one prompt, several checkpoints, their continuations side by side.

A local web page (127.0.0.1 unless --host says otherwise) to see how a model evolved across its
runs: tick checkpoints, type a prompt, read the outputs in columns. The standard library serves it:

    GET  /                  the page (playground.html)
    GET  /api/checkpoints   the checkpoints found under --runs, looked for again on every call
    POST /api/generate      {prompt, checkpoints: [id...], max_new_tokens, temperature, chat, seed}

A checkpoint is a complete training checkpoint (`checkpoints/step_XXXXXXXX/`), a TRL `checkpoint-N/`
or a run's `export/`. Its id is its label (`pretrain/step 300`): a request names checkpoints the
server found, never a path, and a label still means the same checkpoint after a new look.
"""

import ipaddress
import json
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import torch

from .chat import continuation, sampling_options
from .errors import ScratchError
from .model.files import load_model_from
from .run_dir import STAGES, RunDir, checkpoint_step

LOADED_MODELS = 4  # kept in memory, so going back and forth between checkpoints does not reload them
MAX_BODY = 1_000_000
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Checkpoint:
    run: str  # the run directory's name, or its path where two runs share a name
    name: str  # "step 300", "checkpoint-134" or "export"
    path: Path

    @property
    def label(self) -> str:
        return f"{self.run}/{self.name}"


def find_checkpoints(roots: list[str | Path]) -> list[Checkpoint]:
    """Every checkpoint of the runs in `roots` (each a run directory or a directory of runs), in order."""
    run_dirs = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise ScratchError(f"--runs {root}: no such directory")
        runs = [root] if _checkpoints_in(root) else [d for d in sorted(root.iterdir()) if _checkpoints_in(d)]
        if not runs:
            raise ScratchError(
                f"--runs {root}: no checkpoints in it or its subdirectories "
                "(complete checkpoints/step_*, TRL checkpoint-N or export/)"
            )
        run_dirs += sorted(runs, key=lambda d: (STAGES.index(d.name) if d.name in STAGES else len(STAGES), d.name))
    names = [d.name for d in run_dirs]
    found = []
    for run_dir in run_dirs:
        run = run_dir.name if names.count(run_dir.name) == 1 else str(run_dir)
        found += [Checkpoint(run, name, path) for _, name, path in sorted(_checkpoints_in(run_dir))]
    return found


def _checkpoints_in(run_dir: Path) -> list[tuple[float, str, Path]]:
    """(step, name, path); an export comes after every step. Incomplete checkpoints are left out."""
    run = RunDir(run_dir)
    found = [(checkpoint_step(p), f"step {checkpoint_step(p)}", p) for p in run.complete_checkpoints()]
    found += [(checkpoint_step(p), p.name, p) for p in run.trl_checkpoints() if (p / "config.json").is_file()]
    if run.has_export():
        found.append((float("inf"), "export", run.export))
    return found


@lru_cache(maxsize=LOADED_MODELS)
def _load(path: Path, written: int):  # `written`: a re-export to the same path is loaded anew
    model, tokenizer = load_model_from(path)
    return model.to(DEVICE).eval(), tokenizer


def generate(checkpoint: Checkpoint, prompt: str, max_new_tokens: int, temperature: float, chat: bool, seed: int):
    """As `scratchlm generate` does (greedy at temperature 0, else seeded), stopping where an export would."""
    model, tokenizer = _load(checkpoint.path, (checkpoint.path / "config.json").stat().st_mtime_ns)
    chat = chat and bool(tokenizer.chat_template)  # a base model's tokenizer may have none: the plain prompt then
    if chat:
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=False
        )
    else:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
    context = model.config.max_position_embeddings
    if ids.shape[1] + max_new_tokens > context:
        raise ScratchError(
            f"the prompt ({ids.shape[1]} tokens) and max_new_tokens ({max_new_tokens}) do not fit "
            f"{checkpoint.label}'s context of {context} tokens"
        )
    torch.manual_seed(seed)
    new = continuation(model, tokenizer, ids.to(DEVICE), max_new_tokens, sampling_options(temperature))
    return tokenizer.decode(new, skip_special_tokens=True), chat


def read_request(body: dict, checkpoints: list[Checkpoint]) -> tuple[list[Checkpoint], dict]:
    """The checkpoints asked for (in the order found) and generate()'s options; ScratchError if invalid."""
    by_label = {c.label: c for c in checkpoints}
    wanted = body.get("checkpoints")
    if not isinstance(wanted, list) or not wanted:
        raise ScratchError("choose at least one checkpoint")
    unknown = [w for w in wanted if not isinstance(w, str) or w not in by_label]
    if unknown:
        raise ScratchError(f"unknown checkpoint {unknown[0]!r} (reload the page to look for checkpoints again)")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ScratchError("the prompt is empty")
    options = {
        "prompt": prompt,
        "max_new_tokens": body.get("max_new_tokens", 40),
        "temperature": body.get("temperature", 0.0),
        "chat": body.get("chat", False),
        "seed": body.get("seed", 0),
    }
    for key, kind, low in (("max_new_tokens", int, 1), ("temperature", (int, float), 0), ("seed", int, 0)):
        if isinstance(options[key], bool) or not isinstance(options[key], kind) or options[key] < low:
            raise ScratchError(f"{key} must be a number of at least {low}, not {options[key]!r}")
    if not isinstance(options["chat"], bool):
        raise ScratchError("chat must be true or false")
    return [c for c in checkpoints if c.label in wanted], options


class Handler(BaseHTTPRequestHandler):
    server: "Playground"

    def do_GET(self):
        if self.path == "/":
            page = resources.files("scratchlm").joinpath("playground.html").read_bytes()
            return self._send(200, page, "text/html; charset=utf-8")
        if self.path == "/api/checkpoints":
            return self._answer(self._checkpoints)
        self._send_json(404, {"error": f"no such page: {self.path}"})

    def do_POST(self):
        if self.path != "/api/generate":
            return self._send_json(404, {"error": f"no such page: {self.path}"})
        self._answer(self._generate)

    def _checkpoints(self) -> dict:
        self.server.checkpoints = find_checkpoints(self.server.roots)
        return {"checkpoints": [{"id": c.label, "run": c.run, "name": c.name} for c in self.server.checkpoints]}

    def _generate(self) -> dict:
        # Only a JSON content type: a cross-site form cannot send one without a CORS preflight, never granted here.
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            raise ScratchError("send the request as application/json")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ScratchError(f"the request is larger than {MAX_BODY:,} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ScratchError(f"the request is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise ScratchError("the request must be a JSON object")
        checkpoints, options = read_request(body, self.server.checkpoints)
        results = []
        with self.server.generating:  # one generation at a time: the models and the RNG are shared
            for checkpoint in checkpoints:
                start = time.perf_counter()
                text, chat = generate(checkpoint, **options)
                seconds = round(time.perf_counter() - start, 2)
                results.append({"id": checkpoint.label, "text": text, "chat": chat, "seconds": seconds})
        return {"results": results}

    def _answer(self, work) -> None:
        try:
            self._send_json(200, work())
        except ScratchError as err:
            self._send_json(400, {"error": str(err)})
        except Exception as err:  # noqa: BLE001 - the page shows it; the server keeps serving
            traceback.print_exc()
            self._send_json(500, {"error": f"{type(err).__name__}: {err}"})

    def _send_json(self, status: int, value: dict) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # quiet: errors are reported by _answer
        pass


class Playground(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, roots: list[str], host: str, port: int):
        self.roots = roots
        self.checkpoints = find_checkpoints(roots)  # before binding: a wrong --runs fails at once
        self.generating = threading.Lock()
        super().__init__((host, port), Handler)


def serve(roots: list[str], host: str = "127.0.0.1", port: int = 7860) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        print(f"warning: --host {host} lets anyone who can reach it run the models; nothing asks who", file=sys.stderr)
    try:
        server = Playground(roots, host, port)
    except OSError as err:
        raise ScratchError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    runs = len({c.run for c in server.checkpoints})
    print(f"playground: http://{host}:{server.server_address[1]}/", flush=True)
    print(f"{len(server.checkpoints)} checkpoints in {runs} runs; Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
