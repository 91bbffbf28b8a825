"""A Hugging Face Hub stand-in on 127.0.0.1 serving checkpoint directories under the routes huggingface_hub uses
(read from huggingface_hub 2.4's hf_api.py and file_download.py):

- ``GET /api/models/{repo}/revision/{rev}``: the repo's ``sha`` and ``siblings`` (``HfApi.model_info``);
- ``GET /api/models/{repo}/tree/{rev}?recursive=True``: ``[{"type": "file", "path", "size", "oid"}]``
  (``HfApi.list_repo_tree``, one page: no ``Link`` header);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the bytes, with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``
  (``get_hf_file_metadata``) and ``Range: bytes=N-`` answered with 206 (resumed downloads).

``interrupt`` names files whose first GET is cut off half way (the connection closes early); huggingface_hub
keeps what it received (whole 10 MB chunks) and must resume with a Range request.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class HubServer:
    def __init__(self, repos: dict[str, Path], interrupt: set[str] = frozenset()):
        self.repos = {name: Path(d) for name, d in repos.items()}
        self.interrupt = set(interrupt)
        self.log: list[tuple[str, str, str]] = []  # (method, path, Range header)
        self.auth: set[str] = set()  # Authorization headers seen
        self.sha = {name: hashlib.sha1(name.encode()).hexdigest() for name in repos}
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo: str) -> list[Path]:
        d = self.repos[repo]
        return sorted(p for p in d.rglob("*") if p.is_file())

    def downloads(self) -> list[str]:
        """Paths of files fetched with GET (not HEAD)."""
        return [p for m, p, _ in self.log if m == "GET" and "/resolve/" in p]


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _json(self, data, status: int = 200) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _not_found(self, what: str) -> None:
        body = json.dumps({"error": what}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        codes = {"repo": "RepoNotFound", "revision": "RevisionNotFound"}  # the Hub's X-Error-Code values
        self.send_header("X-Error-Code", codes.get(what, "EntryNotFound"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        hub = self.hub
        url = urlparse(self.path)
        path = unquote(url.path)
        hub.log.append((self.command, path, self.headers.get("Range", "")))
        if self.headers.get("Authorization"):
            hub.auth.add(self.headers["Authorization"])
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo, kind, rev = "/".join(parts[2:4]), parts[4], parts[5]
            if repo not in hub.repos:
                return self._not_found("repo")
            if rev not in ("main", hub.sha[repo]):
                return self._not_found("revision")
            root = hub.repos[repo]
            if kind == "revision":
                return self._json({"id": repo, "modelId": repo, "sha": hub.sha[repo], "private": False,
                                   "siblings": [{"rfilename": str(p.relative_to(root))} for p in hub.files(repo)]})
            if kind == "tree":
                return self._json([{"type": "file", "path": str(p.relative_to(root)), "size": p.stat().st_size,
                                    "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in hub.files(repo)])
            return self._not_found("route")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, rel = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if repo not in hub.repos:
                return self._not_found("repo")
            f = hub.repos[repo] / rel
            if rev not in ("main", hub.sha[repo]):
                return self._not_found("revision")
            if not f.is_file():
                return self._not_found("entry")
            return self._file(repo, rel, f.read_bytes())
        self._not_found("route")

    def _file(self, repo: str, rel: str, data: bytes) -> None:
        hub = self.hub
        start = 0
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes="):-1])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", hub.sha[repo])
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        key = f"{repo}/{rel}"
        if key in hub.interrupt and not start:
            hub.interrupt.discard(key)
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(data[start:])
