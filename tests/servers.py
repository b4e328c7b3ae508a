"""Real servers for the tests, started here, never mocked: an HTTP file server on 127.0.0.1 (`FileServer`,
standard library: byte ranges, dropped connections, replaced files; for `rftbench data fetch`), a PostgreSQL
server (Debian's `postgresql` package; initdb/pg_ctl run as the `postgres` user when the tests run as root,
since PostgreSQL refuses to run as root) and a one-node SLURM cluster with accounting (tests/slurm/start.sh:
munged, a private MariaDB, slurmdbd, slurmctld and slurmd, all as root, everything under one folder).

A server that cannot start fails the tests that need it: CI must run them, not skip them. Set
RFTBENCH_TEST_SERVERS=skip to skip them instead on a machine without the packages (`make setup` installs
them where it runs as root on Debian)."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest


def unavailable(what: str, why: str) -> None:
    message = f"{what} cannot start here: {why} (`make setup` installs it where it runs as root on Debian)"
    if os.environ.get("RFTBENCH_TEST_SERVERS") == "skip":
        pytest.skip(message)
    pytest.fail(message + "; set RFTBENCH_TEST_SERVERS=skip to skip these tests instead", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """One server for the session on 127.0.0.1, trust authentication; `database()` gives a new empty one."""

    def __init__(self, folder: Path) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            unavailable("PostgreSQL", "no initdb (Debian package postgresql)")
        self.bin, self.data, self.port = bin_dir, folder / "data", free_port()
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        self.run(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        options = f"-p {self.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run(["pg_ctl", "-D", str(self.data), "-l", str(folder / "log"), "-o", options, "-w", "start"])

    def run(self, args: list[str]) -> None:
        done = subprocess.run(
            as_postgres([str(self.bin / args[0]), *args[1:]]), capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            unavailable("PostgreSQL", f"{args[0]} failed: {(done.stderr or done.stdout).strip()[-300:]}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def database(self) -> str:
        """A new empty database's URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"{self.url}/postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"{self.url}/{name}"

    def stop(self) -> None:
        subprocess.run(
            as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            timeout=120,
        )


SLURM_SCRIPTS = Path(__file__).parent / "slurm"


class SlurmCluster:
    """A one-node SLURM cluster on 127.0.0.1 for the session (tests/slurm/README.md). Its folder is a
    short path under /tmp: slurmd's unix sockets live there (107 bytes at most), and munged wants every
    parent folder world-executable, which pytest's 0700 tmp folder is not. `env` is what a client needs
    (SLURM_CONF)."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            unavailable("SLURM", "munged, slurmctld and slurmd run as root here; run the tests as root")
        if shutil.which("slurmctld") is None or shutil.which("slurmdbd") is None:
            unavailable("SLURM", "no slurmctld/slurmdbd (Debian packages slurmctld, slurmd, slurmdbd, munge)")
        self.folder = Path(tempfile.mkdtemp(prefix="slurm.", dir="/tmp"))
        for _ in range(3):  # three consecutive ports from a free one: retried if one of them is taken
            env = os.environ | {"SLURM_LOCAL_PORT_BASE": str(free_port())}
            done = subprocess.run([SLURM_SCRIPTS / "start.sh", self.folder], env=env, capture_output=True,
                                  text=True, timeout=180)  # fmt: skip
            if done.returncode == 0 or "already in use" not in done.stderr:
                break
        if done.returncode != 0:
            self.stop()
            unavailable("SLURM", f"start.sh failed: {done.stderr.strip()[-500:]}")
        exports = [line[len("export ") :] for line in done.stdout.splitlines() if line.startswith("export ")]
        self.env = dict(line.split("=", 1) for line in exports)

    def run(self, *args: str) -> str:
        done = subprocess.run(args, env=os.environ | self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
        return done.stdout

    def stop(self) -> None:
        subprocess.run([SLURM_SCRIPTS / "stop.sh", self.folder], capture_output=True, timeout=180)
        shutil.rmtree(self.folder, ignore_errors=True)


class FileServer:
    """Serves `files` (URL path -> bytes) over HTTP/1.1 on 127.0.0.1 with byte ranges (206, 416), as the
    datasets' hosts do. `cut[path] = n` makes the next response for `path` stop after n bytes and drop the
    connection (a broken download); paths in `ranges_ignored` are always answered in full (200); `requests`
    records every (path, first byte) asked for."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ranges_ignored: set[str] = set()  # paths answered in full (200) whatever range is asked
        self.requests: list[tuple[str, int]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if (wanted := self.headers.get("Range")) is not None:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                server.requests.append((self.path, start))
                if self.path in server.ranges_ignored:
                    start, wanted = 0, None
                if start >= len(data) > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if wanted else 200)
                if wanted:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                try:
                    if (cut := server.cut.pop(self.path, None)) is not None:
                        self.wfile.write(body[:cut])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: its choice
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
