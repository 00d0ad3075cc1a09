"""A local HTTP server that answers the Hugging Face Hub upload endpoints, for push tests without internet.

It implements just what ``huggingface_hub`` 1.x/2.x calls to create a repo and commit small files
(checked against huggingface_hub 2.4: ``HfApi.create_repo``, ``create_branch``, ``ModelCard.validate``,
``_fetch_upload_modes`` and ``create_commit``):

- ``POST /api/repos/create``                        -> ``{"url": ...}``
- ``POST /api/validate-yaml``                       -> ``{}``
- ``POST /api/models/{repo}/branch/{branch}``       -> ``{}``
- ``POST /api/models/{repo}/preupload/{revision}``  -> every file ``uploadMode: "regular"`` (no LFS)
- ``POST /api/models/{repo}/commit/{revision}``     -> files arrive inline, base64, in NDJSON
- ``GET /api/whoami-v2``

Committed files are kept in memory (``hub.repos[repo_id][revision][path] -> bytes``) so a test can
compare them byte for byte with the run directory. ``hub.fail_on[kind] = (status, message)`` makes
an endpoint answer an error (``kind``: create, validate, branch, preupload, commit; or
``"commit:org/name"`` for one repository only). Point ``HF_ENDPOINT`` at ``hub.url`` in the process that pushes
(``huggingface_hub`` reads it at import time, hence the subprocesses in the tests).

Example:
    >>> with FakeHub() as hub:  # doctest: +SKIP
    ...     subprocess.run([...], env={**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "x"})
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

_REPO_PATH = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/(?P<kind>preupload|commit|branch)/(?P<rev>[^/]+)$")
USER = "fake-user"


class FakeHub:
    """In-memory Hub upload API on ``127.0.0.1`` (a random free port); a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.created: list[dict] = []
        self.commits: list[dict] = []
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization header)
        self.fail_on: dict[str, tuple[int, str]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files committed to ``revision`` of ``repo_id``."""
        return self.repos.get(repo_id, {}).get(revision, {})

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status >= 400:
                    self.send_header("X-Error-Message", body.get("error", ""))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _fail(self, kind: str, repo_id: str | None = None) -> bool:
                key = f"{kind}:{repo_id}" if f"{kind}:{repo_id}" in hub.fail_on else kind
                if key in hub.fail_on:
                    status, message = hub.fail_on[key]
                    self._reply(status, {"error": message})
                    return True
                return False

            def do_GET(self):
                path = urlparse(self.path).path
                hub.requests.append(("GET", path, self.headers.get("Authorization")))
                if path == "/api/whoami-v2":
                    self._reply(200, {"type": "user", "name": USER, "orgs": []})
                else:
                    self._reply(404, {"error": f"Not found: {path}"})

            def do_POST(self):
                path = urlparse(self.path).path
                hub.requests.append(("POST", path, self.headers.get("Authorization")))
                body = self._body()
                if path == "/api/repos/create":
                    if self._fail("create"):
                        return
                    payload = json.loads(body)
                    repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
                    hub.created.append({"repo_id": repo_id, **payload})
                    hub.repos.setdefault(repo_id, {"main": {}})
                    self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                    return
                if path == "/api/validate-yaml":
                    if not self._fail("validate"):
                        self._reply(200, {})
                    return
                match = _REPO_PATH.match(path)
                if not match:
                    self._reply(404, {"error": f"Not found: {path}"})
                    return
                repo_id, kind, revision = match["repo"], match["kind"], unquote(match["rev"])
                if self._fail(kind, repo_id):
                    return
                if repo_id not in hub.repos:
                    self._reply(404, {"error": f"Repository not found: {repo_id}"})
                    return
                branches = hub.repos[repo_id]
                if kind == "branch":
                    branches.setdefault(unquote(match["rev"]), dict(branches["main"]))
                    self._reply(200, {})
                elif kind == "preupload":
                    files = json.loads(body)["files"]
                    self._reply(
                        200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                    )
                else:
                    if revision not in branches:
                        self._reply(404, {"error": f"Revision not found: {revision}"})
                        return
                    header, added = None, {}
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "header":
                            header = item["value"]
                        elif item["key"] == "file":
                            added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        else:  # lfsFile, deletedFile...: not needed by the tests, refuse loudly
                            self._reply(400, {"error": f"fake hub: unsupported commit item {item['key']}"})
                            return
                    branches[revision].update(added)
                    oid = hashlib.sha1(body).hexdigest()
                    hub.commits.append({"repo_id": repo_id, "revision": revision, "header": header, "files": sorted(added)})
                    self._reply(
                        200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}
                    )

        return Handler
