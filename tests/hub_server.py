"""A local stand-in for the Hugging Face Hub: just the endpoints that huggingface_hub's client uses to create a
repo and a branch, commit files, and download them (the same client code as against huggingface.co).

- ``POST /api/repos/create``, ``POST /api/models/{repo}/branch/{branch}``, ``POST /api/validate-yaml``;
- ``POST /api/models/{repo}/preupload/{revision}``: every file is a "regular" upload, so ``create_commit``
  sends it inline, base64 in the NDJSON body of ``POST /api/models/{repo}/commit/{revision}``;
- ``GET /api/models/{repo}[/revision/{revision}]``: repo info (commit sha, files), used to resolve revisions;
- ``HEAD``/``GET /{repo}/resolve/{revision}/{path}``: a file, with the ``X-Repo-Commit`` and ``ETag`` headers
  ``hf_hub_download`` needs, or a 404 with ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound).

Private repos answer only requests with ``Authorization: Bearer <token>``; writes always need it. Requests
it does not know are answered 501 and kept in ``unhandled`` so a test can show them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)

    def commit(self, parent: str | None, files: dict[str, bytes], message: str) -> str:
        digest = hashlib.sha1((parent or "").encode() + message.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha1(files[path]).digest())
        sha = digest.hexdigest()
        self.commits[sha], self.messages[sha] = files, message
        return sha

    def resolve(self, revision: str) -> str | None:
        return self.branches.get(revision) or (revision if revision in self.commits else None)


class FakeHub:
    """``with FakeHub() as hub:`` serves on ``hub.endpoint`` (set ``HF_ENDPOINT`` to it) until the block ends."""

    def __init__(self, token: str = "hf_local_test_token") -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.unhandled: list[str] = []
        self.lock = threading.Lock()

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, format, *args) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ routing

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, self.query = url.path, parse_qs(url.query)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        routes = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", self._create_branch),
            ("POST", rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)", self._preupload),
            ("POST", rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)", self._commit),
            ("GET", rf"/api/models/{REPO}(?:/revision/(?P<revision>[^/]+))?", self._repo_info),
            ("GET", rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<file>.+)", self._resolve),
            ("HEAD", rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                arguments = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                with self.hub.lock:
                    handler(body=body, head=method == "HEAD", **arguments)
                return
        self.hub.unhandled.append(f"{method} {self.path}")
        self._json(501, {"error": f"not implemented by the test Hub: {method} {path}"})

    # ------------------------------------------------------------------ responses

    def _send(
        self, status: int, content: bytes = b"", headers: dict[str, str] | None = None, head: bool = False
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if not head:
            self.wfile.write(content)

    def _json(self, status: int, value: object, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(value).encode(), {"Content-Type": "application/json", **(headers or {})}, head)

    def _error(self, status: int, code: str, message: str, head: bool = False, **headers: str) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message, **headers}, head)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _readable_repo(self, repo: str, head: bool = False) -> Repo | None:
        """The repo if it exists and the request may read it; otherwise answer as the Hub does and None."""
        found = self.hub.repos.get(repo)
        if found is None or (found.private and not self._authorized()):
            self._error(404 if found is None else 401, "RepoNotFound", f"Repository not found: {repo}", head)
            return None
        return found

    def _writable_repo(self, repo: str) -> Repo | None:
        if not self._authorized():
            self._error(401, "RepoNotFound", "Invalid credentials in Authorization header")
            return None
        return self._readable_repo(repo)

    # ------------------------------------------------------------------ endpoints

    def _create_repo(self, body: bytes, head: bool) -> None:
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        url = f"{self.hub.endpoint}/{repo_id}"
        if repo_id in self.hub.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        repo = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
        attributes = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
        repo.branches["main"] = repo.commit(None, attributes, "initial commit")
        self.hub.repos[repo_id] = repo
        self._json(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, body: bytes, head: bool) -> None:
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError as error:
            return self._json(400, {"errors": [{"message": str(error)}]})
        if not isinstance(metadata, dict):
            return self._json(400, {"errors": [{"message": "README.md has no YAML metadata block"}]})
        self._json(200, {"errors": [], "warnings": []})

    def _create_branch(self, body: bytes, head: bool, repo: str, branch: str) -> None:
        found = self._writable_repo(repo)
        if found is None:
            return
        if branch in found.branches:
            return self._json(409, {"error": f"Reference already exists: refs/heads/{branch}"})
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        found.branches[branch] = found.resolve(start)
        self._json(200, {})

    def _preupload(self, body: bytes, head: bool, repo: str, revision: str) -> None:
        if self._writable_repo(repo) is None:
            return
        files = json.loads(body)["files"]
        modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]
        self._json(200, {"files": modes})

    def _commit(self, body: bytes, head: bool, repo: str, revision: str) -> None:
        found = self._writable_repo(repo)
        if found is None:
            return
        if "create_pr" in self.query:
            return self._error(400, "BadRequest", "pull requests are not supported by the test Hub")
        parent = found.resolve(revision)
        if parent is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = dict(found.commits[parent])
        message = ""
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                message = item["value"]["summary"]
            elif item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                files.pop(item["value"]["path"], None)
            else:
                return self._error(400, "BadRequest", f"the test Hub takes regular files only, got {item['key']}")
        sha = found.commit(parent, files, message)
        if revision in found.branches:
            found.branches[revision] = sha
        url = f"{self.hub.endpoint}/{repo}/commit/{sha}"
        self._json(200, {"commitUrl": url, "commitOid": sha, "pullRequestUrl": None})

    def _repo_info(self, body: bytes, head: bool, repo: str, revision: str = "main") -> None:
        found = self._readable_repo(repo)
        if found is None:
            return
        sha = found.resolve(revision)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        self._json(200, {
            "id": repo, "modelId": repo, "sha": sha, "private": found.private,
            "siblings": [{"rfilename": path} for path in sorted(found.commits[sha])],
        })

    def _resolve(self, body: bytes, head: bool, repo: str, revision: str, file: str) -> None:
        found = self._readable_repo(repo, head)
        if found is None:
            return
        sha = found.resolve(revision)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        content = found.commits[sha].get(file)
        if content is None:
            message = f"{file} does not exist at {revision}"
            return self._error(404, "EntryNotFound", message, head, **{"X-Repo-Commit": sha})
        etag = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
        self._send(200, content, headers, head)
