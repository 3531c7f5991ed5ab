"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a temporary directory under /tmp.

The cluster listens on 127.0.0.1 at a free port and on a Unix socket in its own directory; its
superuser is ``postgres`` and every connection is trusted, so ``url(dbname)`` needs no password.
fsync stays on (the default): crash tests SIGKILL the server with ``kill()`` and start it again.

The ``postgres`` binary runs under a small supervisor (this file run as a script, see
``_supervise``) that reaps every process of the server, so that a crash leaves no zombie holding
postmaster.pid's lock, and that shuts the server down if the pytest process dies without doing it.

PostgreSQL refuses to run as root. As root (the test machines), initdb and the server run as the
``postgres`` system user through ``runuser`` (Debian's package makes that user; it is made here
with ``useradd --system`` when missing) and the cluster's directory is chowned to it.

``find_bindir()`` looks for the server's programs (initdb on PATH, else the newest
/usr/lib/postgresql/<version>/bin); ``ensure_bindir()`` installs Debian's ``postgresql``
package when they are missing and the process may (root, apt-get), as ``make postgres`` does,
and raises ``PgUnavailable`` with the reason when they cannot be had.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import sql

PG_LIB = Path("/usr/lib/postgresql")
"""Where Debian puts each PostgreSQL version's programs: /usr/lib/postgresql/<version>/bin."""

SYSTEM_USER = "postgres"
"""The user the server runs as when the tests run as root."""

SUPERUSER = "postgres"
"""The cluster's superuser role (initdb -U), whoever runs the server."""

SETUP_LOCK = Path("/tmp/plait-postgres-setup.lock")
"""Serialises installing the package and making the user across pytest-xdist workers."""

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "shared_buffers": "64MB",
    "max_connections": "200",
    # fsync, synchronous_commit and full_page_writes keep their defaults: crash tests need them
    "log_line_prefix": "'%m [%p] %q%u@%d '",
}
"""postgresql.conf settings for a test machine (port and socket directory are added per cluster)."""

START_TIMEOUT = 60
"""Seconds pg_ctl waits for the server to start or stop (crash recovery included)."""


class PgClusterError(RuntimeError):
    """Making, starting or stopping the cluster failed; the message holds the output and log."""


class PgUnavailable(RuntimeError):
    """No PostgreSQL server programs here, and they cannot be installed; the message says why."""


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)


def find_bindir() -> Path | None:
    """The directory of initdb, pg_ctl and postgres: from PATH, else the newest Debian version."""
    initdb = shutil.which("initdb")
    if initdb:
        bindir = Path(initdb).resolve().parent
        if all((bindir / name).is_file() for name in ("pg_ctl", "postgres")):
            return bindir
    if PG_LIB.is_dir():
        for version in sorted(PG_LIB.iterdir(), key=_version_key, reverse=True):
            bindir = version / "bin"
            if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
                return bindir
    return None


@contextlib.contextmanager
def _setup_lock() -> Iterator[None]:
    with open(SETUP_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_bindir() -> Path:
    """Find the server's programs, installing Debian's ``postgresql`` when root and missing."""
    bindir = find_bindir()
    if bindir is not None:
        return bindir
    where = f"no initdb on PATH or in {PG_LIB}/*/bin"
    if os.geteuid() != 0:
        raise PgUnavailable(f"{where}, and not root to install it: run `make postgres`")
    if shutil.which("apt-get") is None:
        raise PgUnavailable(f"{where}, and no apt-get to install Debian's postgresql package")
    with _setup_lock():
        bindir = find_bindir()  # another worker may have installed it meanwhile
        if bindir is not None:
            return bindir
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            done = subprocess.run(
                "apt-get update -qq && apt-get install -y -qq postgresql",
                shell=True,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
        except subprocess.TimeoutExpired:
            raise PgUnavailable(f"{where}, and installing postgresql took over 900 s") from None
        bindir = find_bindir()
        if bindir is None:
            output = _tail(done.stdout + done.stderr)
            raise PgUnavailable(
                f"{where}, and `apt-get install postgresql` did not bring it "
                f"(exit {done.returncode}):\n{output}"
            )
        return bindir


def _ensure_system_user() -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SYSTEM_USER)
    with _setup_lock():
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(SYSTEM_USER)
        done = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/var/lib/postgresql",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            capture_output=True,
            text=True,
        )
        try:
            return pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PgClusterError(
                f"running as root, the server needs the {SYSTEM_USER!r} user, and "
                f"`useradd --system {SYSTEM_USER}` failed (exit {done.returncode}): "
                f"{(done.stdout + done.stderr).strip()}"
            ) from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _postmaster_pid(datadir: Path) -> int | None:
    try:
        first = (datadir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except FileNotFoundError:
        return None
    return int(first) if first.isdigit() and _alive(int(first)) else None


def _cluster_processes(datadir: Path | str) -> list[int]:
    """The live processes of a cluster: the postmaster and its children work in its datadir."""
    where = os.path.realpath(datadir)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == where and _alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def _server_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


class PgCluster:
    """A PostgreSQL cluster in /tmp/plait-pg-<name>-*, made by the first ``start()``.

    ``start()``, ``stop()`` (fast shutdown), ``kill()`` (SIGKILL, a crash), ``restart()``;
    ``url(dbname)`` is ``postgresql://postgres@127.0.0.1:PORT/dbname``; ``create_database`` and
    ``drop_database`` make and remove databases; ``close()`` stops it and removes its directory.
    """

    def __init__(self, bindir: Path | None = None, *, name: str = "") -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PgUnavailable(f"no initdb on PATH or in {PG_LIB}/*/bin: run `make postgres`")
        self.bindir = found
        self.as_root = os.geteuid() == 0
        self.owner = _ensure_system_user() if self.as_root else None
        prefix = f"plait-pg-{name}-" if name else "plait-pg-"
        self.base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.base.chmod(0o755)
        if self.owner is not None:
            os.chown(self.base, self.owner.pw_uid, self.owner.pw_gid)
        self.datadir = self.base / "data"
        self.socket_dir = self.base
        self.log_path = self.base / "server.log"
        self.host = "127.0.0.1"
        self.port = _free_port()
        self._made = False
        self._supervisor: subprocess.Popen[bytes] | None = None

    # the programs

    def _run(self, program: str, *args: str, timeout: float = 120) -> str:
        command = [str(self.bindir / program), *args]
        if self.as_root:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        try:
            done = subprocess.run(
                command,
                cwd=self.base,
                env=_server_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise PgClusterError(self._describe(f"{program} took over {timeout} s", exc)) from None
        if done.returncode != 0:
            raise PgClusterError(self._describe(f"{program} failed (exit {done.returncode})", done))
        return done.stdout

    def _describe(self, what: str, done: object) -> str:
        parts = [f"PostgreSQL cluster in {self.base}: {what}"]
        command = getattr(done, "args", None) or getattr(done, "cmd", None)
        if command:
            parts.append("command: " + " ".join(map(str, command)))
        for stream in ("stdout", "stderr"):
            text = getattr(done, stream, None)
            if isinstance(text, bytes):
                text = text.decode(errors="replace")
            if text and text.strip():
                parts.append(f"{stream}:\n{_tail(text)}")
        parts.append(f"server log ({self.log_path}), last lines:\n{self.log_tail()}")
        return "\n".join(parts)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines) or "(empty)"
        except FileNotFoundError:
            return "(no log yet)"

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write("\n# plait's tests (tests/postgres_cluster.py)\n")
            conf.write("include 'plait_test.conf'\n")
        self._made = True

    def _write_settings(self) -> None:
        settings = dict(SETTINGS, port=str(self.port), unix_socket_directories=f"'{self.base}'")
        path = self.datadir / "plait_test.conf"
        path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        if self.owner is not None:
            os.chown(path, self.owner.pw_uid, self.owner.pw_gid)

    # the server

    @property
    def pid(self) -> int | None:
        """The postmaster's process id, from postmaster.pid, while it runs."""
        return _postmaster_pid(self.datadir)

    @property
    def running(self) -> bool:
        return self.pid is not None

    def processes(self) -> list[int]:
        """Every live process of this cluster: the postmaster and its children."""
        return _cluster_processes(self.datadir)

    def start(self) -> None:
        """Start the server (making the cluster first) and wait until it takes connections."""
        if not self._made:
            self._initdb()
        if self.running:
            return
        self._reap(30)
        for attempt in range(3):
            self._write_settings()
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._supervisor = self._spawn()
            problem = self._wait_ready()
            if problem is None:
                return
            self._kill_all()
            new = ""
            with contextlib.suppress(FileNotFoundError), open(self.log_path, "rb") as log:
                log.seek(logged)
                new = log.read().decode(errors="replace")
            if attempt < 2 and "could not bind" in new:
                self.port = _free_port()  # another process took the port meanwhile: another
                continue
            raise PgClusterError(self._describe(problem, None))

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        if self.as_root:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        supervise = [sys.executable, __file__, "supervise", str(os.getpid()), str(self.datadir)]
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [*supervise, *command],
                cwd=self.base,
                env=_server_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest is not the server's: teardown stops it
            )

    def _wait_ready(self) -> str | None:
        """None once the server takes connections, else what went wrong."""
        assert self._supervisor is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            code = self._supervisor.poll()
            if code is not None:
                return f"the server exited while starting (exit {code})"
            try:
                lines = (self.datadir / "postmaster.pid").read_text().splitlines()
            except FileNotFoundError:
                lines = []
            # postmaster.pid: pid, datadir, start time, port, socket dir, address, shm key, status
            if (
                len(lines) >= 8
                and lines[7].strip() == "ready"
                and lines[3].strip() == str(self.port)
                and self.pid is not None
            ):
                return None
            time.sleep(0.02)
        return f"the server was not ready within {START_TIMEOUT} s"

    def stop(self) -> None:
        """Stop the server with a fast shutdown (clients disconnected, a clean checkpoint)."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGINT)
        self._reap(START_TIMEOUT)

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster, then every other process of the cluster."""
        pid = self.pid
        if pid is None:
            raise PgClusterError(self._describe("kill(): the server is not running", None))
        os.kill(pid, signal.SIGKILL)
        self._kill_all()

    def restart(self) -> None:
        """Stop (fast) and start the server again, on the same port."""
        self.stop()
        self.start()

    def _reap(self, timeout: float) -> None:
        """Wait for the supervisor to end: then every process of the cluster has ended."""
        if self._supervisor is not None:
            try:
                self._supervisor.wait(timeout)
            except subprocess.TimeoutExpired:
                left = self.processes()
                raise PgClusterError(
                    self._describe(f"processes {left} still run {timeout} s after the stop", None)
                ) from None
            self._supervisor = None
        if left := self.processes():
            raise PgClusterError(self._describe(f"processes {left} outlived the server", None))

    def _kill_all(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._supervisor is not None and self._supervisor.poll() is None:
            # before postmaster.pid is written the server is the supervisor's child only
            for pid in _children(self._supervisor.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._reap(30)

    def close(self) -> None:
        """Stop the server (killing it if a stop fails) and remove the cluster's directory."""
        try:
            try:
                self.stop()
            except PgClusterError:
                self._kill_all()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    # databases

    def url(self, dbname: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:PORT/dbname``: trusted, no password."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def _admin(self, statement: sql.Composable) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)

    def create_database(self, name: str) -> str:
        """Make an empty database (from template0) and return its URL."""
        from psycopg import sql

        self._admin(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending any connections to it that are still open."""
        from psycopg import sql

        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def __enter__(self) -> PgCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PgCluster({self.base}, port={self.port}, running={self.running})"


PR_SET_CHILD_SUBREAPER = 36
"""prctl(2): orphaned descendants of this process become its children, for it to reap."""


def _supervise(parent: int, datadir: str, command: list[str]) -> int:
    """Run the server (``command``) as a child, reap every process of it, and end after them.

    Started by ``PgCluster.start()`` in a session of its own. As a subreaper it reaps the
    server's processes that a crash orphans (``kill()``), which would otherwise linger as zombies
    and hold postmaster.pid's lock. When ``parent`` (the pytest process) ends without stopping
    the server, or on SIGTERM, it asks the server for a fast shutdown, and kills it 30 s later;
    in the first case it also removes the cluster's directory.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("supervisor: cannot be a subreaper: a crash may leave zombies", file=sys.stderr)
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    stopping_since: float | None = None

    def stop(*_: object) -> None:
        nonlocal stopping_since
        if stopping_since is None:
            stopping_since = time.monotonic()
            target = _postmaster_pid(Path(datadir)) or server.pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGINT)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    code = 0
    orphaned = False
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            # the server and every process it left have ended; with no pytest to close the
            # cluster, remove its directory (made by PgCluster under /tmp) here
            if orphaned and Path(datadir).parent.name.startswith("plait-pg"):
                shutil.rmtree(Path(datadir).parent, ignore_errors=True)
            return code
        if pid == server.pid:
            code = server.returncode = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code
        elif pid == 0:
            if os.getppid() != parent:
                orphaned = True
                stop()
            if stopping_since is not None and time.monotonic() - stopping_since > 30:
                for left in {*_cluster_processes(datadir), *_children(os.getpid())}:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(left, signal.SIGKILL)
            time.sleep(0.05)


if __name__ == "__main__" and sys.argv[1:2] == ["supervise"]:
    sys.exit(_supervise(int(sys.argv[2]), sys.argv[3], sys.argv[4:]))
