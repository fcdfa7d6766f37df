"""A small Hugging Face Hub-protocol server for tests: the endpoints stock huggingface_hub calls to create a
repo, commit files (regular uploads), list refs, tag, read revision info and trees, and resolve files.
It runs on loopback inside the tests; the real Hub is not reachable from CI."""

from __future__ import annotations

import base64
import hashlib
import json
import threading

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"X-Error-Code": code})


class Repo:
    def __init__(self):
        self.commits: dict[str, dict[str, bytes]] = {}  # commit sha → {path: content}
        self.branches: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def resolve(self, revision: str) -> str | None:
        return self.branches.get(revision) or self.tags.get(revision) or (revision if revision in self.commits
                                                                            else None)


class HubState:
    def __init__(self, token: str | None):
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.Lock()
        self.fail_next_commits = 0  # answer this many commits with 503, to exercise retries
        self.requests: list[str] = []


def create_hub_app(token: str | None = None) -> tuple[FastAPI, HubState]:
    app = FastAPI()
    state = HubState(token)

    def authorized(request: Request) -> bool:
        return state.token is None or request.headers.get("authorization") == f"Bearer {state.token}"

    def find(kind: str, namespace: str, name: str) -> Repo | None:
        return state.repos.get((kind.rstrip("s"), f"{namespace}/{name}"))

    @app.middleware("http")
    async def record(request: Request, call_next):
        state.requests.append(f"{request.method} {request.url.path}")
        return await call_next(request)

    @app.post("/api/repos/create")
    async def create_repo(request: Request):
        if not authorized(request):
            return _error(401, "Unauthorized", "Invalid credentials")
        body = await request.json()
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        kind = body.get("type") or "model"
        prefix = "" if kind == "model" else f"{kind}s/"
        url = f"{request.base_url}{prefix}{repo_id}"
        with state.lock:
            if (kind, repo_id) in state.repos:
                return JSONResponse({"error": "You already created this repo", "url": url}, status_code=409)
            state.repos[(kind, repo_id)] = Repo()
        return {"url": url, "name": repo_id}

    @app.post("/api/validate-yaml")
    async def validate_yaml():
        return {"errors": [], "warnings": []}

    @app.get("/api/{kind}/{namespace}/{name}/refs")
    async def refs(kind: str, namespace: str, name: str):
        repo = find(kind, namespace, name)
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        as_list = lambda refs, prefix: [{"name": ref, "ref": f"refs/{prefix}/{ref}", "targetCommit": sha}
                                        for ref, sha in refs.items()]
        return {"branches": as_list(repo.branches, "heads"), "tags": as_list(repo.tags, "tags"), "converts": []}

    @app.post("/api/{kind}/{namespace}/{name}/preupload/{revision}")
    async def preupload(kind: str, namespace: str, name: str, revision: str, request: Request):
        if find(kind, namespace, name) is None:
            return _error(404, "RepoNotFound", "Repository not found")
        files = (await request.json())["files"]
        return {"files": [{"path": file["path"], "uploadMode": "regular", "shouldIgnore": False} for file in files]}

    @app.post("/api/{kind}/{namespace}/{name}/commit/{revision}")
    async def commit(kind: str, namespace: str, name: str, revision: str, request: Request):
        if not authorized(request):
            return _error(401, "Unauthorized", "Invalid credentials")
        repo = find(kind, namespace, name)
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        if state.fail_next_commits:
            state.fail_next_commits -= 1
            return _error(503, "ServiceUnavailable", "Try again later")
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        with state.lock:
            parent = repo.branches.get(revision)
            if header.get("parentCommit") and header["parentCommit"] != parent:
                return _error(412, "PreconditionFailed", "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits.get(parent, {}))
            for line in lines:
                if line["key"] == "file":
                    files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                elif line["key"] == "deletedFile":
                    files.pop(line["value"]["path"], None)
            sha = hashlib.sha1(f"{parent}{header['summary']}{sorted(files.items())}".encode()).hexdigest()
            repo.commits[sha] = files
            repo.branches[revision] = sha
        return {"commitOid": sha, "commitUrl": f"{request.base_url}{namespace}/{name}/commit/{sha}"}

    @app.post("/api/{kind}/{namespace}/{name}/tag/{revision}")
    async def tag(kind: str, namespace: str, name: str, revision: str, request: Request):
        if not authorized(request):
            return _error(401, "Unauthorized", "Invalid credentials")
        repo = find(kind, namespace, name)
        body = await request.json()
        with state.lock:
            sha = repo.resolve(revision) if repo else None
            if sha is None:
                return _error(404, "RevisionNotFound", "Revision not found")
            if body["tag"] in repo.tags:
                return _error(409, "Conflict", f"Tag {body['tag']} already exists")
            repo.tags[body["tag"]] = sha
        return {}

    def find_revision(kind: str, namespace: str, name: str, revision: str):
        """(repo, commit sha), or the 404 the Hub answers when either is missing."""
        repo = find(kind, namespace, name)
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        sha = repo.resolve(revision)
        if sha is None:
            return _error(404, "RevisionNotFound", "Revision not found")
        return repo, sha

    @app.get("/api/{kind}/{namespace}/{name}/revision/{revision}")
    async def revision_info(kind: str, namespace: str, name: str, revision: str):
        found = find_revision(kind, namespace, name, revision)
        if isinstance(found, Response):
            return found
        repo, sha = found
        return {"id": f"{namespace}/{name}", "sha": sha, "private": False,
                "siblings": [{"rfilename": path} for path in sorted(repo.commits[sha])]}

    @app.get("/api/{kind}/{namespace}/{name}/tree/{revision}")
    @app.get("/api/{kind}/{namespace}/{name}/tree/{revision}/{path:path}")
    async def tree(kind: str, namespace: str, name: str, revision: str, path: str = ""):
        found = find_revision(kind, namespace, name, revision)
        if isinstance(found, Response):
            return found
        repo, sha = found
        return [{"type": "file", "path": file, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
                for file, content in sorted(repo.commits[sha].items()) if file.startswith(path)]

    def resolve_file(kind: str, namespace: str, name: str, revision: str, path: str, request: Request):
        found = find_revision(kind, namespace, name, revision)
        if isinstance(found, Response):
            return found
        repo, sha = found
        content = repo.commits[sha].get(path)
        if content is None:
            return _error(404, "EntryNotFound", "Entry not found")
        headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
                   "Content-Length": str(len(content))}
        return Response(b"" if request.method == "HEAD" else content, headers=headers,
                        media_type="application/octet-stream")

    @app.api_route("/datasets/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    async def resolve_dataset_file(namespace: str, name: str, revision: str, path: str, request: Request):
        return resolve_file("datasets", namespace, name, revision, path, request)

    @app.api_route("/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    async def resolve_model_file(namespace: str, name: str, revision: str, path: str, request: Request):
        return resolve_file("models", namespace, name, revision, path, request)

    return app, state
