"""A small in-memory Hugging Face Hub look-alike on 127.0.0.1, for end-to-end tests of the real client.

It answers the endpoints ``huggingface_hub`` calls for ``create_repo``, ``create_branch``,
``upload_folder``/``create_commit`` (preupload, the git-LFS batch API, the ndjson commit),
``hf_hub_download`` (HEAD/GET ``resolve``), ``snapshot_download``/``list_repo_files`` (revision and tree)
and ``model_info``, with the headers the client relies on (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
``X-Linked-Size``, ``X-Error-Code``). No Xet: the client must run with ``HF_HUB_DISABLE_XET``.

Storage follows git's model closely enough for the client: every commit is an immutable snapshot
(sha -> {path: bytes}) and branches are names pointing at a commit, so pinning a revision returns
exactly the old bytes. Written for this project from the client's behaviour; nothing here is
imported from elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

# Files the Hub stores through git-LFS (the Hub decides this from .gitattributes; these are its defaults
# for model weights), plus anything large.
LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".npy")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
REPO = r"(?P<repo>[^/]+/[^/]+)"


def git_blob_sha(data: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as a regular file's oid/ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> snapshot {path: bytes}
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit sha
    history: list[str] = field(default_factory=list)  # commit shas, oldest first

    def resolve(self, revision: str) -> str | None:
        """A branch name or a (full) commit sha -> the commit sha, or None."""
        revision = unquote(revision)
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        return None


class HubState:
    """Everything the server holds; tests may read and alter it directly (e.g. to corrupt a file)."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 hex -> content uploaded through the LFS endpoint
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.cdn_url: str | None = None  # where LFS downloads are redirected (another origin, like the Hub's CDN)
        # Called as after_request(method, path) once a reply is sent, outside the lock: lets a test change
        # the repo between two client requests (e.g. a push landing mid-download).
        self.after_request: Callable[[str, str], None] | None = None
        self.lock = threading.Lock()

    def repo(self, repo_type: str, repo_id: str) -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def commit(self, repo: Repo, branch: str, changes: dict[str, bytes | None], message: str) -> str:
        """Apply ``changes`` (None deletes) on top of ``branch`` and move the branch to the new commit."""
        parent = repo.branches.get(branch)
        files = dict(repo.commits[parent]) if parent else {}
        for path, content in changes.items():
            if content is None:
                files = {p: c for p, c in files.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
            else:
                files[path] = content
                if is_lfs(path, len(content)):  # LFS content lives in the object store, addressed by sha256
                    self.lfs[hashlib.sha256(content).hexdigest()] = content
        digest = hashlib.sha1()
        digest.update((parent or "").encode() + message.encode() + str(len(repo.history)).encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        sha = digest.hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        repo.history.append(sha)
        return sha


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client pools connections
    state: HubState  # set on the subclass made per server

    # --- plumbing ---------------------------------------------------------------------------------
    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    @property
    def base_url(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, data, headers: dict[str, str] | None = None, head: bool = False):
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})}, head)

    def _error(self, status: int, code: str | None, message: str, head: bool = False, **headers: str):
        extra = {"X-Error-Message": message, **{k.replace("_", "-"): v for k, v in headers.items()}}
        if code:
            extra["X-Error-Code"] = code
        self._json(status, {"error": message}, extra, head)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def _visible(self, repo_type: str, repo_id: str, head: bool = False) -> Repo | None:
        """The repo, or None after answering 'not found' (also for a private repo without a token)."""
        repo = self.state.repo(repo_type, repo_id)
        if repo is None or (repo.private and not self._authorized()):
            status = 401 if not self._authorized() else 404
            self._error(status, "RepoNotFound", f"Repository not found: {repo_id}", head)
            return None
        return repo

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        with self.state.lock:
            self.state.requests.append((method, url.path))
        for pattern, handler_method, handler in self.ROUTES:
            if handler_method != method:
                continue
            match = re.fullmatch(pattern, path)
            if match:
                with self.state.lock:
                    handler(self, query=query, **match.groupdict())
                if self.state.after_request is not None:
                    self.state.after_request(method, path)
                return
        self._error(404, None, f"no route for {method} {path}")

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    # --- endpoints --------------------------------------------------------------------------------
    def create_repo(self, query):
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        body = json.loads(self._body() or b"{}")
        repo_type = body.get("type") or "model"
        repo_id = f"{body['organization'] or 'user'}/{body['name']}"
        url = f"{self.base_url}/{URL_PREFIX[repo_type]}{repo_id}"
        if self.state.repo(repo_type, repo_id) is not None:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        private = bool(body.get("private")) or body.get("visibility") == "private"
        repo = Repo(repo_id, repo_type, private)
        self.state.repos[(repo_type, repo_id)] = repo
        self.state.commit(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit")
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, query):
        self._body()
        self._json(200, {"errors": [], "warnings": []})

    def create_branch(self, query, kind, repo, branch):
        body = json.loads(self._body() or b"{}")
        target = self._visible(REPO_TYPES[kind], repo)
        if target is None:
            return
        if branch in target.branches:
            return self._error(409, None, f"Reference already exists: {branch}")
        start = target.resolve(body.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {body.get('startingPoint')}")
        target.branches[branch] = start
        self._json(200, {})

    def preupload(self, query, kind, repo, rev):
        body = json.loads(self._body())
        target = self._visible(REPO_TYPES[kind], repo)
        if target is None:
            return
        head = target.resolve(rev)
        current = target.commits[head] if head else {}
        files = []
        for entry in body["files"]:
            mode = "lfs" if is_lfs(entry["path"], entry["size"]) else "regular"
            reply = {"path": entry["path"], "uploadMode": mode, "shouldIgnore": False}
            if entry["path"] in current:  # the client skips a file whose oid equals its local one
                old = current[entry["path"]]
                reply["oid"] = hashlib.sha256(old).hexdigest() if mode == "lfs" else git_blob_sha(old)
            files.append(reply)
        self._json(200, {"files": files, "commitOid": head})

    def lfs_batch(self, query, prefix, repo):
        body = json.loads(self._body())
        target = self._visible(REPO_TYPES.get((prefix or "").rstrip("/") or "models", "model"), repo)
        if target is None:
            return
        objects = []
        for obj in body["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:  # no "actions": the client treats it as already stored
                entry["actions"] = {"upload": {"href": f"{self.base_url}/lfs-store/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, query, oid):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, None, f"content does not match its sha256 oid {oid}")
        self.state.lfs[oid] = data
        self._send(200)

    def commit(self, query, kind, repo, rev):
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        target = self._visible(REPO_TYPES[kind], repo)
        if target is None:
            return
        branch = unquote(rev)
        if branch not in target.branches:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        header, changes = {}, {}
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                changes[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    return self._error(422, None, f"LFS object {value['oid']} was never uploaded")
                changes[value["path"]] = self.state.lfs[value["oid"]]
            elif key in ("deletedFile", "deletedFolder"):
                changes[value["path"]] = None
        parent = header.get("parentCommit")
        if parent and parent != target.branches[branch]:
            return self._error(412, None, "parentCommit is not the head of the branch")
        sha = self.state.commit(target, branch, changes, header.get("summary", ""))
        url = f"{self.base_url}/{URL_PREFIX[target.repo_type]}{target.repo_id}/commit/{sha}"
        self._json(200, {"commitUrl": url, "commitOid": sha, "pullRequestUrl": None})

    def _file_headers(self, sha: str, content: bytes, path: str) -> dict[str, str]:
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if is_lfs(path, len(content)):
            digest = hashlib.sha256(content).hexdigest()
            headers.update({"ETag": f'"{digest}"', "X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(content))})
        else:
            headers["ETag"] = f'"{git_blob_sha(content)}"'
        return headers

    def resolve(self, query, prefix, repo, rev, path, head=False):
        target = self._visible(REPO_TYPES.get((prefix or "").rstrip("/") or "models", "model"), repo, head)
        if target is None:
            return
        sha = target.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        files = target.commits[sha]
        if path not in files:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}", head, X_Repo_Commit=sha)
        content = files[path]
        headers = self._file_headers(sha, content, path)
        if is_lfs(path, len(content)) and self.state.cdn_url:
            # As the Hub does: a 302 to a signed storage URL on another origin; the metadata the client
            # needs rides on the redirect itself, and the client must not forward its token there.
            oid = hashlib.sha256(content).hexdigest()
            headers["Location"] = f"{self.state.cdn_url}/cdn-lfs/{oid}?signature=test"
            return self._send(302, b"", headers, head)
        self._send_content(content, headers, head)

    def _send_content(self, content: bytes, headers: dict[str, str], head: bool) -> None:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) + 1 if match.group(2) else len(content)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(content)}"
            return self._send(206, content[start:end], headers, head)
        self._send(200, content, headers, head)

    def resolve_head(self, query, prefix, repo, rev, path):
        self.resolve(query, prefix, repo, rev, path, head=True)

    def repo_info(self, query, kind, repo, rev=None):
        target = self._visible(REPO_TYPES[kind], repo)
        if target is None:
            return
        sha = target.resolve(rev or "main")
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        siblings = [{"rfilename": p} for p in sorted(target.commits[sha])]
        self._json(200, {"id": target.repo_id, "sha": sha, "private": target.private, "siblings": siblings})

    def tree(self, query, kind, repo, rev, path=None):
        target = self._visible(REPO_TYPES[kind], repo)
        if target is None:
            return
        sha = target.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        root = (path or "").strip("/")
        entries, folders = [], set()
        for file_path, content in sorted(target.commits[sha].items()):
            if root and not file_path.startswith(root + "/"):
                continue
            rest = file_path[len(root) + 1 :] if root else file_path
            parts = rest.split("/")
            for depth in range(1, len(parts)):  # every folder on the way
                folder = "/".join(([root] if root else []) + parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "path": folder, "oid": git_blob_sha(folder.encode())})
            if not recursive and len(parts) > 1:
                continue
            entry = {"type": "file", "path": file_path, "size": len(content), "oid": git_blob_sha(content)}
            if is_lfs(file_path, len(content)):
                entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
            entries.append(entry)
        self._json(200, entries)

    ROUTES = [
        (r"/api/repos/create", "POST", create_repo),
        (r"/api/validate-yaml", "POST", validate_yaml),
        (rf"/api/(?P<kind>models|datasets|spaces)/{REPO}/branch/(?P<branch>.+)", "POST", create_branch),
        (rf"/api/(?P<kind>models|datasets|spaces)/{REPO}/preupload/(?P<rev>.+)", "POST", preupload),
        (rf"/api/(?P<kind>models|datasets|spaces)/{REPO}/commit/(?P<rev>.+)", "POST", commit),
        (rf"/(?P<prefix>datasets/|spaces/)?{REPO}\.git/info/lfs/objects/batch", "POST", lfs_batch),
        (r"/lfs-store/(?P<oid>[0-9a-f]{64})", "PUT", lfs_put),
        (rf"/api/(?P<kind>models|datasets|spaces)/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "GET", tree),
        (rf"/api/(?P<kind>models|datasets|spaces)/{REPO}/revision/(?P<rev>.+)", "GET", repo_info),
        (rf"/api/(?P<kind>models|datasets|spaces)/{REPO}", "GET", repo_info),
        (rf"/(?P<prefix>datasets/|spaces/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "GET", resolve),
        (rf"/(?P<prefix>datasets/|spaces/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "HEAD", resolve_head),
    ]


class _CDNHandler(_Handler):
    """The storage host LFS downloads are redirected to: serves objects by sha256, refuses Hub tokens."""

    def cdn_object(self, query, oid, head=False):
        if "Authorization" in self.headers:  # a signed URL carries its own auth; S3 rejects a second one
            return self._error(400, None, "an Authorization header was sent to the storage host", head)
        content = self.state.lfs.get(oid)
        if content is None:
            return self._error(404, None, f"no object {oid}", head)
        self._send_content(content, {"ETag": f'"{oid}"', "Content-Type": "application/octet-stream"}, head)

    def cdn_object_head(self, query, oid):
        self.cdn_object(query, oid, head=True)

    ROUTES = [
        (r"/cdn-lfs/(?P<oid>[0-9a-f]{64})", "GET", cdn_object),
        (r"/cdn-lfs/(?P<oid>[0-9a-f]{64})", "HEAD", cdn_object_head),
    ]


class HubServer:
    """``with HubServer() as hub: hub.url`` serves the in-memory Hub on 127.0.0.1 from a daemon thread."""

    def __init__(self, lfs_redirect: bool = True) -> None:
        self.state = HubState()
        self._servers, self._threads = [], []
        for base in (_Handler, _CDNHandler) if lfs_redirect else (_Handler,):
            server = ThreadingHTTPServer(("127.0.0.1", 0), type(base.__name__, (base,), {"state": self.state}))
            server.daemon_threads = True
            self._servers.append(server)
            self._threads.append(threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
            ))
        if lfs_redirect:
            self.state.cdn_url = self._url(self._servers[1])

    @staticmethod
    def _url(server: ThreadingHTTPServer) -> str:
        host, port = server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return self._url(self._servers[0])

    def start(self) -> "HubServer":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        for server, thread in zip(self._servers, self._threads):
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- helpers for tests ------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        repo = self.state.repo(repo_type, repo_id)
        if repo is None:
            raise KeyError(repo_id)
        return repo.commits[repo.resolve(revision)]

    def put_files(
        self, repo_id: str, files: dict[str, bytes | None], branch: str = "main", private: bool = False
    ) -> str:
        """Commit ``files`` directly (creating the repo if needed), bypassing the client: returns the sha."""
        with self.state.lock:
            repo = self.state.repo("model", repo_id)
            if repo is None:
                repo = Repo(repo_id, "model", private)
                self.state.repos[("model", repo_id)] = repo
                self.state.commit(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit")
            return self.state.commit(repo, branch, files, "direct commit")
