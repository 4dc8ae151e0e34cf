"""A local stand-in for the Hugging Face Hub: the few endpoints huggingface_hub calls to create a repo
and a branch, upload a folder (preupload, LFS batch + basic PUT, ndjson commit) and download one
(revision info, tree, resolve). Tests point HF_ENDPOINT at it, so the real client code runs unchanged.

Only the LFS "basic" transfer is served, not Xet: clients run with HF_HUB_DISABLE_XET=1.
Every request must carry the expected token; `hold`, `fail_commits` and `requests` let tests make
uploads slow or failing and see what was sent.
"""

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

LFS_MIN_BYTES = 10_000  # like the Hub: large (binary) files go through LFS, small text inline


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class Repo:
    def __init__(self, private: bool):
        self.private = private
        self.commits = {}  # sha -> {path: content}
        self.branches = {}  # name -> sha
        self.commit({".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, "main")

    def commit(self, files: dict, branch: str) -> str:
        sha = hashlib.sha1(json.dumps(sorted((p, git_blob_id(c)) for p, c in files.items())).encode()).hexdigest()
        sha = hashlib.sha1((sha + branch + str(len(self.commits))).encode()).hexdigest()
        self.commits[sha] = files
        self.branches[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        return self.branches.get(revision) or (revision if revision in self.commits else None)


class HubStub:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.hold = threading.Event()  # commits wait until it is set
        self.hold.set()
        self.fail_commits = 0  # answer this many commits with 500 (after the hold)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self.route("HEAD")

            def do_GET(self):
                self.route("GET")

            def do_POST(self):
                self.route("POST")

            def do_PUT(self):
                self.route("PUT")

            def route(self, method: str):
                path = urlsplit(self.path).path
                with hub.lock:
                    hub.requests.append((method, path))
                signed = path.startswith("/lfs-upload/")  # like a pre-signed storage URL: no token sent
                if not signed and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self.reply(401, {"error": "Invalid credentials in Authorization header"})
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                for pattern, handler in ROUTES:
                    match = re.fullmatch(pattern, f"{method} {path}")
                    if match:
                        return handler(hub, self, *[unquote(g or "") for g in match.groups()])
                self.reply(404, {"error": f"no route for {method} {path}"})

            def reply(self, status: int, data=None, body: bytes | None = None, headers: dict | None = None):
                payload = body if body is not None else json.dumps(data).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def json(self):
                return json.loads(self.body)

        return Handler


def repo_or_404(hub: HubStub, request, repo_id: str, revision: str | None = None):
    repo = hub.repos.get(repo_id)
    if repo is None:
        request.reply(404, {"error": f"Repository {repo_id} not found"}, headers={"X-Error-Code": "RepoNotFound"})
        return None, None
    sha = repo.resolve(revision or "main")
    if sha is None:
        request.reply(404, {"error": f"Invalid rev id: {revision}"}, headers={"X-Error-Code": "RevisionNotFound"})
        return None, None
    return repo, sha


def create_repo(hub, request):
    data = request.json()
    repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
    if repo_id in hub.repos:
        return request.reply(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
    hub.repos[repo_id] = Repo(private=data.get("visibility") == "private" or bool(data.get("private")))
    request.reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})


def create_branch(hub, request, repo_id, branch):
    repo, _ = repo_or_404(hub, request, repo_id)
    if repo is None:
        return
    if branch in repo.branches:
        return request.reply(409, {"error": f"Reference refs/heads/{branch} already exists"})
    start = repo.resolve(request.json().get("startingPoint") or "main")
    repo.branches[branch] = start
    request.reply(200, {})


def repo_info(hub, request, repo_id, revision=None):
    repo, sha = repo_or_404(hub, request, repo_id, revision)
    if repo is not None:
        files = repo.commits[sha]
        siblings = [{"rfilename": p} for p in sorted(files)]
        request.reply(200, {"id": repo_id, "sha": sha, "private": repo.private, "siblings": siblings})


def tree(hub, request, repo_id, revision, prefix=""):
    repo, sha = repo_or_404(hub, request, repo_id, revision)
    if repo is None:
        return
    entries = []
    for path, content in sorted(repo.commits[sha].items()):
        if path.startswith(prefix.strip("/")):
            entry = {"type": "file", "path": path, "size": len(content), "oid": git_blob_id(content)}
            if len(content) >= LFS_MIN_BYTES:
                entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
            entries.append(entry)
    request.reply(200, entries)


def preupload(hub, request, repo_id, revision):
    repo, sha = repo_or_404(hub, request, repo_id, revision)
    if repo is None:
        return
    existing = repo.commits[sha]
    files = []
    for f in request.json()["files"]:
        lfs = f["size"] >= LFS_MIN_BYTES
        old = existing.get(f["path"])
        oid = None if old is None else hashlib.sha256(old).hexdigest() if lfs else git_blob_id(old)
        files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
    request.reply(200, {"files": files})


def lfs_batch(hub, request, repo_id):
    objects = []
    for obj in request.json()["objects"]:
        entry = {"oid": obj["oid"], "size": obj["size"]}
        if obj["oid"] not in hub.lfs:
            entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}"}}
        objects.append(entry)
    request.reply(200, {"transfer": "basic", "objects": objects})


def lfs_upload(hub, request, oid):
    if hashlib.sha256(request.body).hexdigest() != oid:
        return request.reply(400, {"error": "sha256 mismatch"})
    hub.lfs[oid] = request.body
    request.reply(200, {})


def commit(hub, request, repo_id, revision):
    hub.hold.wait()
    with hub.lock:
        failing = hub.fail_commits > 0
        hub.fail_commits -= failing
    if failing:
        return request.reply(500, {"error": "Internal Error (stub: failing on purpose)"})
    repo, sha = repo_or_404(hub, request, repo_id, revision)
    if repo is None:
        return
    files = dict(repo.commits[sha])
    for line in request.body.splitlines():
        item = json.loads(line)
        value = item["value"]
        if item["key"] == "file":
            files[value["path"]] = base64.b64decode(value["content"])
        elif item["key"] == "lfsFile":
            if value["oid"] not in hub.lfs:
                return request.reply(422, {"error": f"LFS object {value['oid']} was never uploaded"})
            files[value["path"]] = hub.lfs[value["oid"]]
        elif item["key"] == "deletedFile":
            files.pop(value["path"], None)
    new = repo.commit(files, revision)
    request.reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{new}", "commitOid": new})


def validate_yaml(hub, request):
    """The model card's front matter must be a YAML mapping (the Hub checks more: licenses, tags)."""
    content = request.json()["content"]
    try:
        front = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
        assert isinstance(front, dict)
    except (yaml.YAMLError, AssertionError, IndexError):
        return request.reply(400, {"errors": [{"message": "README.md front matter is not a YAML mapping"}]})
    request.reply(200, {"errors": [], "warnings": []})


def resolve(hub, request, repo_id, revision, path):
    repo, sha = repo_or_404(hub, request, repo_id, revision)
    if repo is None:
        return
    content = repo.commits[sha].get(path)
    if content is None:
        return request.reply(404, {"error": f"{path} not found"}, headers={"X-Error-Code": "EntryNotFound"})
    etag = hashlib.sha256(content).hexdigest() if len(content) >= LFS_MIN_BYTES else git_blob_id(content)
    request.reply(200, body=content, headers={"X-Repo-Commit": sha, "ETag": f'"{etag}"'})


REPO = r"([^/]+/[^/]+?)"
ROUTES = [
    (r"POST /api/repos/create", create_repo),
    (r"POST /api/validate-yaml", validate_yaml),
    (rf"POST /api/models/{REPO}/branch/([^/]+)", create_branch),
    (rf"GET /api/models/{REPO}", repo_info),
    (rf"GET /api/models/{REPO}/revision/([^/]+)", repo_info),
    (rf"GET /api/models/{REPO}/tree/([^/]+)(/.*)?", tree),
    (rf"POST /api/models/{REPO}/preupload/([^/]+)", preupload),
    (rf"POST /api/models/{REPO}/commit/([^/]+)", commit),
    (rf"POST /{REPO}\.git/info/lfs/objects/batch", lfs_batch),
    (r"PUT /lfs-upload/([0-9a-f]{64})", lfs_upload),
    (rf"(?:GET|HEAD) /{REPO}/resolve/([^/]+)/(.+)", resolve),
]
