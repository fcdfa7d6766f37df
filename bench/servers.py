"""Real servers on loopback for the tests and the benchmarks: PostgreSQL (Debian's package; `initdb` into a
temporary folder) and nginx with the repository's configuration. Each raises ServerUnavailable, with the install
command, when its package is absent (tests skip on it)."""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


class ServerUnavailable(RuntimeError):
    """A server's package is not installed; the message says how to install it."""


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _postgres_binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


class Postgres:
    """One PostgreSQL server in a temporary folder. It refuses to run as root, so as root it runs as the
    `postgres` user that Debian's package creates."""

    def __init__(self):
        self.initdb, self.pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            raise ServerUnavailable("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
        self.folder = Path(tempfile.mkdtemp(prefix="catdog-postgres-"))
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            owner = pwd.getpwnam(self.user)
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        self.port = free_port()
        self._run(self.initdb, "-D", str(self.folder / "data"), "-U", "catdog", "-A", "trust", "--no-sync")
        self.start()

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self.pg_ctl, "-D", str(self.folder / "data"), "-o", options, "-l", str(self.folder / "log"),
                  "-w", "start")

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://catdog@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A URL to a fresh, empty database."""
        import sqlalchemy as sa

        name = f"test_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


def wait_for(condition, seconds: float = 30, every: float = 0.1):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not true within {seconds} s: {condition}")


class Nginx:
    """nginx with deploy/nginx.conf, changed only where a test must: its port, the replicas' addresses, and
    files in a temporary folder."""

    def __init__(self, upstreams: list[str]):
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if not binary:
            raise ServerUnavailable("nginx is not installed: apt-get install nginx (.ci/run does)")
        self.folder = Path(tempfile.mkdtemp(prefix="catdog-nginx-"))
        self.folder.chmod(0o777)  # nginx's workers run as an unprivileged user and keep request bodies here
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        config = (Path(__file__).parent.parent / "deploy" / "nginx.conf").read_text()
        servers = "".join(f"\n        server {upstream} max_fails=1 fail_timeout=10s;" for upstream in upstreams)
        config, replaced = re.subn(r"(\n\s*server replica-\d+:7860[^;]*;)+", servers, config)
        assert replaced == 1, "deploy/nginx.conf no longer lists its replicas as `server replica-N:7860 …;`"
        config = config.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
        paths = "".join(f"\n    {name}_temp_path {self.folder / name};"
                        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        config = config.replace("http {", "http {" + paths + f"\n    access_log {self.folder / 'access.log'};", 1)
        config = f"pid {self.folder / 'nginx.pid'};\nerror_log {self.folder / 'error.log'};\n" + config
        (self.folder / "nginx.conf").write_text(config)
        self.process = subprocess.Popen([binary, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"),
                                         "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: self.process.poll() is not None or _answers(self.url), 20)
        except AssertionError:
            pass
        if self.process.poll() is not None:
            raise RuntimeError(f"nginx did not start: {self.process.stderr.read().decode()}")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url + "health", timeout=2)
        return True
    except urllib.error.HTTPError:
        return True  # nginx answered, whatever the replicas said
    except OSError:
        return False
