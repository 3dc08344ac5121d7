"""JupyterHub with per-user single-user servers sharing one ``notebookos cluster``, as deploy/jupyterhub/ sets it up.

A real ``notebookos cluster`` (3 logical hosts) and a real JupyterHub (configurable-http-proxy from npm), started
with ``deploy/jupyterhub/jupyterhub_config.py`` itself, on loopback, with two users: ``ada``, a Hub admin, and
``bob``. They log in with the shared password of the Hub's trial mode (JupyterHub's token API with the password in
the body), every user's server runs as this account (SimpleLocalProcessSpawner), and every request goes through the
Hub's proxy with the user's own token, as JupyterLab's would. Each starts a notebookos kernel on their server and
runs a cell on it over the kernel websocket; then the notebookos API on each server must show bob only his kernel,
owned by the Hub user name, refuse him the pool's admin actions (403) and another user's kernel (404), and show ada
everything. A member of the pool-admin group who is not a Hub admin administers the pool too. A browser's login
(the Hub's form, then OAuth to the user's server, then the dashboard's cookie and XSRF header) gets the same
answers. The idle culler runs as a Hub service with its role; culling itself is not waited for.

Skipped, saying why, where configurable-http-proxy is not installed (``make test`` installs it into .hub-tools/ with
npm where node is there). Every process started here is stopped at the end: the Hub (which stops the proxy, the
users' servers and the culler), whatever of its process tree outlived it, then the cluster with its replicas.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

pytest.importorskip("jupyterhub", reason="jupyterhub is not installed (it is in the [test] extra)")
pytest.importorskip("jupyterhub_idle_culler", reason="jupyterhub-idle-culler is not installed (the [test] extra)")

from notebookos.gpu_broker.loadtest.lab_driver import JupyterRest, KernelChannel  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HUB_CONFIG = REPO / "deploy" / "jupyterhub" / "jupyterhub_config.py"
BIN = Path(sys.executable).parent
LOCAL_PROXY = REPO / ".hub-tools" / "node_modules" / ".bin" / "configurable-http-proxy"
ADMIN, USER = "ada", "bob"  # ada is a Hub admin; bob is not
ADMIN_GROUP = "notebookos-admins"
START_TIMEOUT_S = 60.0
KERNEL_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0

pytestmark = pytest.mark.timeout(300)


def _proxy_command() -> str:
    found = shutil.which("configurable-http-proxy") or (str(LOCAL_PROXY) if LOCAL_PROXY.exists() else None)
    if found:
        return found
    if shutil.which("node") is None:
        pytest.skip(
            "configurable-http-proxy is not installed and node is missing: JupyterHub's proxy needs node "
            "(then `make test` installs it with npm into .hub-tools/)"
        )
    pytest.skip(
        "configurable-http-proxy is not installed: `make hub-tools` (part of `make test`) installs it with "
        "npm into .hub-tools/"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    """This process's environment without Jupyter's, JupyterHub's and notebookos's own variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_", "NOTEBOOKOS_"))}


# ------------------------------------------------------------------------------------------------ processes


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> dict[int, str]:
    """Every live process below ``root`` (by parent pid), with its start time (to tell a reused pid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if (started := _start_time(pid)) is not None:
            found[pid] = started
            todo.extend(children.get(pid, []))
    return found


@dataclass
class LoggedProcess:
    """A process in a session of its own whose output is kept line by line (for ``wait_for`` and failures)."""

    name: str
    process: subprocess.Popen
    log: list[str] = field(default_factory=list)
    lines: queue.Queue = field(default_factory=queue.Queue)

    @classmethod
    def start(cls, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path) -> LoggedProcess:
        process = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started = cls(name, process)

        def read() -> None:
            for line in process.stdout:  # type: ignore[union-attr]
                started.log.append(line.rstrip("\n"))
                started.lines.put(line)
            started.lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        return started

    def output(self, last: int = 80) -> str:
        return f"--- {self.name} (last {last} lines) ---\n" + "\n".join(self.log[-last:])

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first line matching ``pattern``; AssertionError with the output if it exits or times out first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{self.name}: no line matching {pattern!r} within {timeout:.0f} s\n{self.output()}"
                ) from None
            if line is None:
                self.process.wait()
                raise AssertionError(f"{self.name} exited with {self.process.returncode}\n{self.output()}")
            if found := re.search(pattern, line):
                return found

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM and wait; then SIGKILL whatever of its process tree (as it was just before) is still there."""
        tree = _descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid, started in tree.items():
            if _start_time(pid) == started:  # still the same process: it outlived its parent
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# ------------------------------------------------------------------------------------------------- the Hub


@dataclass
class Hub:
    url: str  # the proxy's public URL, http://127.0.0.1:PORT/
    process: LoggedProcess
    passwords: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def call(
        self,
        method: str,
        path: str,
        user: str | None = None,
        body: Any = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """A request through the proxy with ``user``'s token (or ``token``): the status and the JSON (or text)."""
        token = token or (self.tokens[user] if user else None)
        headers = {"Authorization": f"token {token}"} if token else {}
        resp = requests.request(
            method,
            self.url + path.lstrip("/"),
            headers=headers,
            data=None if body is None else json.dumps(body),
            timeout=timeout,
        )
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, resp.text

    def new_token(self, user: str) -> str:
        """A token of ``user``, who logs in with their password in the request (the Hub's authenticator)."""
        status, body = self.call(
            "POST",
            f"hub/api/users/{user}/tokens",
            body={"auth": {"username": user, "password": self.passwords[user]}, "note": "tests/hub"},
        )
        assert status == 201, f"{status} {body}\n{self.process.output()}"
        return body["token"]

    def spawn(self, user: str) -> None:
        status, body = self.call("POST", f"hub/api/users/{user}/server", user)
        assert status in (201, 202), f"{status} {body}\n{self.process.output()}"

    def wait_ready(self, user: str, timeout: float = START_TIMEOUT_S) -> None:
        """Follow the spawn's progress stream (server-sent events) to its ready (or failed) event."""
        deadline = time.monotonic() + timeout
        events = []
        with requests.get(
            self.url + f"hub/api/users/{user}/server/progress",
            stream=True,
            timeout=timeout,
            headers={"Authorization": f"token {self.tokens[user]}"},
        ) as resp:
            assert resp.status_code == 200, resp.text
            for line in resp.iter_lines(decode_unicode=True):  # each read waits at most `timeout`
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("ready"):
                        return
                    assert not events[-1].get("failed"), f"{events}\n{self.process.output()}"
                assert time.monotonic() < deadline, f"{user}'s server not ready in {timeout:.0f} s: {events}"
        raise AssertionError(f"{user}'s progress stream ended before ready: {events}\n{self.process.output()}")

    def api(
        self,
        user: str,
        path: str,
        method: str = "GET",
        body: Any = None,
        token: str | None = None,
        server: str | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """A request to a single-user server (``user``'s own unless ``server``), through the proxy."""
        return self.call(method, f"user/{server or user}/{path.lstrip('/')}", user, body, token, timeout)


@pytest.fixture(scope="module")
def proxy() -> str:
    """configurable-http-proxy's command (skips the test, saying why, without it): asked before anything starts."""
    return _proxy_command()


@pytest.fixture(scope="module")
def cluster(proxy: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``notebookos cluster`` with 3 logical hosts of 1 virtual GPU, on loopback: its URL and join token file."""
    tmp = tmp_path_factory.mktemp("cluster")
    token_file = tmp / "join-token"  # created by the service (mode 0600); the users' servers use it as the token
    env = {**_clean_env(), "TMPDIR": str(tmp)}  # its temporary state folder, removed with its kernels on exit
    proc = LoggedProcess.start(
        "notebookos cluster",
        [
            str(BIN / "notebookos"),
            "cluster",
            "--hosts",
            "3",
            "--gpus-per-host",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--join-token-file",
            str(token_file),
        ],
        env,
        tmp,
    )
    try:
        url = proc.wait_for(r"notebookos cluster .* at (http://127\.0\.0\.1:\d+)", START_TIMEOUT_S).group(1)
        yield url, token_file
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def hub(proxy: str, cluster: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """JupyterHub from deploy/jupyterhub/jupyterhub_config.py, with ada (admin) and bob, both logged in."""
    cluster_url, token_file = cluster
    tmp = tmp_path_factory.mktemp("hub")
    public = f"http://127.0.0.1:{_free_port()}/"
    passwords = {USER: secrets.token_hex(8), ADMIN: secrets.token_hex(20)}
    env = {
        **_clean_env(),
        "PATH": f"{Path(proxy).parent}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "NOTEBOOKOS_CLUSTER_URL": cluster_url,
        "NOTEBOOKOS_CLUSTER_TOKEN_FILE": str(token_file),
        "NOTEBOOKOS_HUB_USERS": USER,
        "NOTEBOOKOS_HUB_ADMINS": ADMIN,
        "NOTEBOOKOS_HUB_BIND_URL": public,
        "NOTEBOOKOS_HUB_PASSWORD": passwords[USER],
        "NOTEBOOKOS_HUB_ADMIN_PASSWORD": passwords[ADMIN],
        "NOTEBOOKOS_HUB_HOMES": str(tmp / "homes"),
    }
    proc = LoggedProcess.start(
        "jupyterhub",
        [
            str(BIN / "jupyterhub"),
            "-f",
            str(HUB_CONFIG),
            f"--JupyterHub.hub_bind_url=http://127.0.0.1:{_free_port()}",
            f"--ConfigurableHTTPProxy.api_url=http://127.0.0.1:{_free_port()}",
            f"--JupyterHub.db_url=sqlite:///{tmp / 'jupyterhub.sqlite'}",
            f"--JupyterHub.cookie_secret_file={tmp / 'jupyterhub_cookie_secret'}",
        ],
        env,
        tmp,
    )
    started = Hub(public, proc, passwords)
    try:
        proc.wait_for(r"JupyterHub is now running at", START_TIMEOUT_S)
        for user in (ADMIN, USER):
            started.tokens[user] = started.new_token(user)
        yield started
    finally:
        proc.stop()


@dataclass
class Kernels:
    ids: dict[str, str]  # user -> the id of the notebookos kernel they started on their server
    outputs: dict[str, str]  # user -> what its cell printed


@pytest.fixture(scope="module")
def kernels(hub: Hub) -> Iterator[Kernels]:
    """Both users' servers started, a notebookos kernel on each, a cell run on each over its websocket."""
    users = (ADMIN, USER)
    for user in users:
        hub.spawn(user)  # both spawn at once
    with ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(hub.wait_ready, users))
    ids: dict[str, str] = {}

    def start_kernel(user: str) -> None:
        status, body = hub.api(user, "api/kernels", "POST", {"name": "notebookos"}, timeout=KERNEL_TIMEOUT_S)
        assert status == 201, f"{user}: {status} {body}\n{hub.process.output()}"
        ids[user] = body["id"]

    try:
        with ThreadPoolExecutor(len(users)) as pool:
            list(pool.map(start_kernel, users))

        async def run_cell(user: str) -> str:
            rest = JupyterRest(f"{hub.url}user/{user}/", hub.tokens[user])
            channel = await KernelChannel.connect(rest, ids[user])
            try:
                await channel.kernel_info(timeout=KERNEL_TIMEOUT_S)
                record = await channel.run(f"who = {user!r}\nprint(who, 6 * 7)", timeout=KERNEL_TIMEOUT_S)
                assert record.status == "ok", (user, record.status, record.error)
                return "".join(record.stdout)
            finally:
                channel.close()

        async def run_cells() -> list[str]:
            return await asyncio.gather(*(run_cell(user) for user in users))

        yield Kernels(ids, dict(zip(users, asyncio.run(run_cells()))))
    finally:
        for user, kernel_id in ids.items():  # shut down through each server: its replicas leave the cluster
            hub.api(user, f"api/kernels/{kernel_id}", "DELETE", timeout=KERNEL_TIMEOUT_S)


# ----------------------------------------------------------------------------------------------------- tests


def test_each_user_runs_a_notebookos_kernel_owned_by_their_hub_name(hub: Hub, kernels: Kernels) -> None:
    assert kernels.outputs == {ADMIN: f"{ADMIN} 42\n", USER: f"{USER} 42\n"}
    for user in (ADMIN, USER):
        status, me = hub.api(user, "api/notebookos/me")
        assert status == 200 and me == {"name": user, "owner": user, "admin": user == ADMIN}, me
    status, body = hub.api(USER, "api/notebookos/kernels")
    assert status == 200, body
    assert [(k["id"], k["owner"]) for k in body["kernels"]] == [(kernels.ids[USER], USER)], body
    assert len(body["kernels"][0]["replicas"]) == 3


def test_a_user_who_is_not_an_admin_gets_403_for_the_pool_and_404_for_another_users_kernel(
    hub: Hub, kernels: Kernels
) -> None:
    theirs = kernels.ids[ADMIN]
    status, body = hub.api(USER, "api/notebookos/hosts/host-1/drain", "POST")
    assert status == 403 and "c.NotebookOS.admin_users" in body["message"], (status, body)
    status, body = hub.api(USER, "api/notebookos/hosts/host-1", "PATCH", {"gpus": 1})
    assert status == 403, (status, body)
    for method, path in (
        ("GET", f"api/notebookos/kernels/{theirs}"),
        ("DELETE", f"api/notebookos/kernels/{theirs}"),
        ("POST", f"api/notebookos/kernels/{theirs}/replicas/0/restart"),
    ):
        status, body = hub.api(USER, path, method)
        assert status == 404 and body["message"] == f"no kernel {theirs} in this cluster", (method, path, body)
    # Nor can bob reach ada's server, and with it her kernel, through Jupyter's own API: the Hub refuses.
    status, _ = hub.api(USER, f"api/kernels/{theirs}", server=ADMIN)
    assert status == 403
    # The pool's hosts and GPUs are everyone's to see, as the cause of a waiting cell.
    status, body = hub.api(USER, "api/notebookos/cluster")
    assert status == 200 and len(body["hosts"]) == 3, body


def test_the_hub_admin_sees_every_kernel_and_administers_the_pool(hub: Hub, kernels: Kernels) -> None:
    status, body = hub.api(ADMIN, "api/notebookos/kernels")
    assert status == 200, body
    assert {k["id"]: k["owner"] for k in body["kernels"]} == {kernels.ids[ADMIN]: ADMIN, kernels.ids[USER]: USER}
    status, body = hub.api(ADMIN, f"api/notebookos/kernels/{kernels.ids[USER]}")
    assert status == 200 and body["owner"] == USER, body
    status, body = hub.api(ADMIN, "api/notebookos/hosts/host-1", "PATCH", {"gpus": 1})  # an admin action
    assert status == 200, (status, body)


def test_a_member_of_the_pool_admin_group_administers_the_pool(hub: Hub, kernels: Kernels) -> None:
    """bob, added to the group deploy/jupyterhub/ names in c.NotebookOS.admin_groups, is a pool admin without
    being a Hub admin (a new token: a single-user server caches the Hub's answer about a token for minutes)."""
    status, body = hub.call("POST", f"hub/api/groups/{ADMIN_GROUP}/users", ADMIN, {"users": [USER]})
    assert status == 200, body
    try:
        token = hub.new_token(USER)
        status, me = hub.api(USER, "api/notebookos/me", token=token)
        assert status == 200 and me["admin"] is True, me
        status, body = hub.api(USER, "api/notebookos/kernels", token=token)
        assert {k["owner"] for k in body["kernels"]} == {ADMIN, USER}, body
        status, _ = hub.api(USER, "api/notebookos/hosts/host-1", "PATCH", {"gpus": 1}, token=token)
        assert status == 200
        status, body = hub.call("GET", "hub/api/user", token=token)
        assert body["admin"] is False and ADMIN_GROUP in body["groups"], body
    finally:
        status, body = hub.call("DELETE", f"hub/api/groups/{ADMIN_GROUP}/users", ADMIN, {"users": [USER]})
        assert status == 200, body


def test_the_idle_culler_runs_as_a_hub_service(hub: Hub) -> None:
    status, services = hub.call("GET", "hub/api/services", ADMIN)
    assert status == 200, services
    culler = services["idle-culler"]
    assert culler["command"][1:] == ["-m", "jupyterhub_idle_culler", "--timeout=3600"], culler
    assert culler["pid"] > 0 and _start_time(culler["pid"]) is not None, culler  # started by the Hub, running
    assert culler["roles"] == ["notebookos-idle-culler"], culler


def test_the_deploy_config_points_every_server_at_the_cluster_and_runs_the_culler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The config file as JupyterHub loads it (no Hub, no node needed): the culler service with a role that lets it
    stop servers, and every user's server started with the cluster's c.NotebookOS options."""
    from traitlets.config.loader import PyFileConfigLoader

    for name in [k for k in os.environ if k.startswith("NOTEBOOKOS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("NOTEBOOKOS_CLUSTER_URL", "https://10.0.0.1:8765")
    monkeypatch.setenv("NOTEBOOKOS_CULL_IDLE_S", "1800")
    config = PyFileConfigLoader(HUB_CONFIG.name, str(HUB_CONFIG.parent)).load_config()
    [service] = config.JupyterHub.services
    assert service["command"] == [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=1800"]
    [role] = config.JupyterHub.load_roles
    assert role["services"] == [service["name"]]
    assert {"list:users", "read:users:activity", "read:servers", "delete:servers"} <= set(role["scopes"])
    assert config.Spawner.cmd == [str(BIN / "jupyterhub-singleuser")]
    assert config.Spawner.args == [
        "--NotebookOS.cluster_url=https://10.0.0.1:8765",
        "--NotebookOS.cluster_token_file=/etc/notebookos/join-token",
        f"--NotebookOS.admin_groups={ADMIN_GROUP}",
    ]
    assert "authenticator_class" not in config.JupyterHub  # without a trial password: the system's accounts (PAM)
    monkeypatch.setenv("NOTEBOOKOS_CULL_IDLE_S", "0")
    assert "services" not in PyFileConfigLoader(HUB_CONFIG.name, str(HUB_CONFIG.parent)).load_config().JupyterHub


def test_a_browser_login_gets_the_same_answers(hub: Hub, kernels: Kernels) -> None:
    """What JupyterLab in a browser does: the Hub's login form, then the OAuth redirects to the user's server, whose
    cookie then authenticates the notebookos API (the Hub's user model comes from the OAuth token's scopes here, not
    from an API token's)."""
    for user in (ADMIN, USER):
        with requests.Session() as browser:
            page = browser.get(hub.url + "hub/login", timeout=30)
            xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
            assert xsrf, page.text[:2000]
            landed = browser.post(
                hub.url + "hub/login",
                timeout=60,
                data={"username": user, "password": hub.passwords[user], "_xsrf": xsrf.group(1)},
            )
            assert landed.status_code == 200 and landed.url.startswith(f"{hub.url}user/{user}/lab"), landed.url
            me = browser.get(f"{hub.url}user/{user}/api/notebookos/me", timeout=30)
            assert me.status_code == 200 and me.json() == {"name": user, "owner": user, "admin": user == ADMIN}
            listed = browser.get(f"{hub.url}user/{user}/api/notebookos/kernels", timeout=30).json()["kernels"]
            assert {k["owner"] for k in listed} == ({ADMIN, USER} if user == ADMIN else {USER}), listed
            # The dashboard's changing requests: its page sets the _xsrf cookie they send back as X-XSRFToken.
            page = browser.get(f"{hub.url}user/{user}/notebookos/", timeout=30)
            assert page.status_code == 200 and f'"baseUrl": "/user/{user}/"' in page.text, page.text[:1000]
            resize = f"{hub.url}user/{user}/api/notebookos/hosts/host-1"
            assert browser.patch(resize, json={"gpus": 1}, timeout=30).status_code == 403  # no XSRF header
            xsrf_cookie = browser.cookies.get("_xsrf", path=f"/user/{user}/")
            assert xsrf_cookie, browser.cookies
            answer = browser.patch(resize, json={"gpus": 1}, timeout=30, headers={"X-XSRFToken": xsrf_cookie})
            if user == ADMIN:
                assert answer.status_code == 200, answer.text
            else:  # past the XSRF check, refused as no admin
                assert answer.status_code == 403 and "c.NotebookOS.admin_users" in answer.json()["message"]
