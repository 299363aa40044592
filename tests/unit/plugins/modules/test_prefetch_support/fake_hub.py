# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tiny stand-in for the HuggingFace Hub HTTP API, for tests on loopback (HF_ENDPOINT).

Serves what huggingface_hub's snapshot_download/hf_hub_download ask for:
  GET  /api/{models|datasets}/<repo>/revision/<rev>          repo info (sha, siblings)
  GET  /api/{models|datasets}/<repo>/tree/<rev>[/<path>]     recursive file listing
  HEAD|GET /[datasets/]<repo>/resolve/<rev>/<file>           file content + X-Repo-Commit, ETag
Repositories are built in memory: {repo_type: {repo_id: {branch: {path: bytes}}}}. A commit sha is
derived from the content, so changing a file moves the branch to a new commit. Every request is
recorded in `requests` (method, path) so tests can tell whether a file was fetched again.

Run standalone (used by the Molecule scenario):
  python3 fake_hub.py PORT_FILE   # writes the chosen port to PORT_FILE, serves until killed
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

DEFAULT_REPOS = {
    "model": {
        "mlinfra/tiny-bert": {
            "main": {
                "config.json": b'{"model_type": "bert", "hidden_size": 8}\n',
                "tokenizer.json": b'{"version": "1.0", "model": {"vocab": {"[PAD]": 0}}}\n',
                "model.safetensors": b"\x00" * 4096,
                "onnx/model.onnx": b"\x01" * 2048,
                "README.md": b"# tiny-bert\nA test model served on loopback.\n",
            }
        }
    },
    "dataset": {
        "mlinfra/tiny-text": {
            "main": {
                "data/train.csv": b"text,label\nhello,1\nworld,0\n",
                "README.md": b"# tiny-text\n",
            }
        }
    },
}


def _sha1(data):
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def commit_of(files):
    h = hashlib.sha1(usedforsecurity=False)
    for path in sorted(files):
        h.update(path.encode() + b"\0" + _sha1(files[path]).encode() + b"\0")
    return h.hexdigest()


class Hub:
    def __init__(self, repos=None):
        source = DEFAULT_REPOS if repos is None else repos
        self.repos = {
            t: {r: {b: dict(files) for b, files in br.items()} for r, br in rs.items()} for t, rs in source.items()
        }
        self.requests = []
        self.commits = {}
        self.lock = threading.Lock()

    def resolve(self, repo_type, repo_id, rev):
        """(commit, files) of a branch or of a commit seen before; (None, None) when unknown."""
        branches = self.repos.get(repo_type, {}).get(repo_id)
        if branches is None:
            return None, None
        for files in branches.values():  # remember every branch head, so old commits stay resolvable
            self.commits.setdefault((repo_type, repo_id, commit_of(files)), dict(files))
        if rev in branches:
            return commit_of(branches[rev]), branches[rev]
        files = self.commits.get((repo_type, repo_id, rev))
        return (rev, files) if files is not None else (None, None)


def _handler(hub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, code, body=b"", headers=None, head=False):
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, obj, code=200):
            self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        def _not_found(self, head=False):
            self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)

        def _route(self, head):
            path = unquote(urlsplit(self.path).path)
            with hub.lock:
                hub.requests.append((self.command, path))
            parts = path.strip("/").split("/")
            if parts[0] == "api" and len(parts) >= 4 and parts[1] in ("models", "datasets"):
                repo_type = parts[1][:-1]
                repo_id = "/".join(parts[2:4])
                kind, rev = (parts[4], parts[5]) if len(parts) >= 6 else ("revision", "main")
                sha, files = hub.resolve(repo_type, repo_id, rev)
                if sha is None:
                    return self._not_found(head)
                if kind == "revision":
                    return self._json(
                        {
                            "id": repo_id,
                            "sha": sha,
                            "private": False,
                            "siblings": [{"rfilename": p} for p in sorted(files)],
                        }
                    )
                if kind == "tree":
                    prefix = "/".join(parts[6:])
                    entries, dirs = [], set()
                    for p in sorted(files):
                        if prefix and not p.startswith(prefix + "/"):
                            continue
                        entries.append({"type": "file", "oid": _sha1(files[p]), "size": len(files[p]), "path": p})
                        d = p.rsplit("/", 1)[0] if "/" in p else None
                        while d and d not in dirs:
                            dirs.add(d)
                            entries.append({"type": "directory", "oid": _sha1(d.encode()), "size": 0, "path": d})
                            d = d.rsplit("/", 1)[0] if "/" in d else None
                    return self._json(entries)
                return self._not_found(head)
            if parts[0] == "datasets":
                repo_type, parts = "dataset", parts[1:]
            else:
                repo_type = "model"
            if len(parts) >= 5 and parts[2] == "resolve":
                repo_id = "/".join(parts[:2])
                sha, files = hub.resolve(repo_type, repo_id, parts[3])
                name = "/".join(parts[4:])
                if sha is None or name not in files:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha or ""}, head)
                data = files[name]
                headers = {
                    "X-Repo-Commit": sha,
                    "ETag": '"%s"' % _sha1(data),
                    "Content-Type": "application/octet-stream",
                    "Accept-Ranges": "none",
                }
                return self._send(200, data, headers, head)
            return self._not_found(head)

        def do_GET(self):
            self._route(head=False)

        def do_HEAD(self):
            self._route(head=True)

    return Handler


class FakeHub:
    """Context manager: a running fake hub on 127.0.0.1 with an ephemeral port."""

    def __init__(self, repos=None):
        self.hub = Hub(repos)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.hub))
        self.endpoint = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self):
        return self.hub.requests

    def downloads(self):
        return [p for m, p in self.hub.requests if m == "GET" and "/resolve/" in p]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def main(argv):
    server = ThreadingHTTPServer(("127.0.0.1", int(argv[2]) if len(argv) > 2 else 0), _handler(Hub()))
    with open(argv[1], "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
