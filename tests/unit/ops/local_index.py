"""A PyPI-like simple index (PEP 503) on loopback over wheels `pip download`ed once from PyPI.

``LocalIndex(files_dir, cache_control)`` serves ``/simple/<project>/`` and ``/files/<wheel>``, sends
``Cache-Control: <cache_control>`` on every response (empty: none, as a proxy that strips it), and
records the paths requested, so a test sees whether pip downloaded a file or took it from a cache.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import subprocess
import threading

import pytest

# The Python every user of a plain host has, which the service account and members run.
SYSTEM_PYTHON = "/usr/bin/python3"
needs_system_venv = pytest.mark.skipif(
    subprocess.run([SYSTEM_PYTHON, "-c", "import ensurepip, venv"], capture_output=True, check=False).returncode != 0,
    reason="the system Python has no venv (python3-venv)",
)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        if self.server.cache_control:
            self.send_header("Cache-Control", self.server.cache_control)
        super().end_headers()

    def log_message(self, fmt, *args):
        self.server.requests.append(self.path)


class LocalIndex:
    def __init__(self, files_dir, root, cache_control="max-age=600"):
        self.root = root
        os.makedirs(os.path.join(root, "files"), exist_ok=True)
        projects = {}
        for name in sorted(os.listdir(files_dir)):
            if not name.endswith(".whl"):
                continue
            os.link(os.path.join(files_dir, name), os.path.join(root, "files", name))
            project = re.sub(r"[-_.]+", "-", name.split("-")[0]).lower()
            projects.setdefault(project, []).append(name)
        for project, names in projects.items():
            os.makedirs(os.path.join(root, "simple", project))
            with open(os.path.join(root, "simple", project, "index.html"), "w") as f:
                for name in names:
                    with open(os.path.join(root, "files", name), "rb") as w:
                        digest = hashlib.sha256(w.read()).hexdigest()
                    f.write('<a href="../../files/%s#sha256=%s">%s</a>\n' % (name, digest, name))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=root))
        self.server.cache_control = cache_control
        self.server.requests = []
        self.url = "http://127.0.0.1:%d/simple" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self):
        return list(self.server.requests)

    def downloads(self):
        return [r for r in self.server.requests if r.startswith("/files/")]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
