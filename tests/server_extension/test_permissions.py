"""Who sees and does what on a shared pool (``server_extension/permissions.py``), through a real Jupyter Server on
the session's cluster, with several users.

A test identity provider authenticates with the server's token and takes the user from the ``X-Test-User`` header.
JupyterHub is faked, not run: the server's environment names its Hub user (``JUPYTERHUB_USER``), and the users
carry the Hub's model of themselves (``hub_user``: name, admin, groups) as ``jupyterhub.singleuser``'s
``JupyterHubUser`` does. Other users' kernels are placed on the cluster directly, owned as their own servers'
provisioners would own them. The personal-server default (no configuration, not under JupyterHub: the server's user
is the admin and owns the account's kernels) is checked by ``test_api.py``, whose server is one.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jupyter_server.auth import IdentityProvider, User
from jupyter_server.serverapp import ServerApp

from notebookos.gpu_broker.cluster.client import ClusterClient, ClusterError
from notebookos.server_extension.api.cluster import (
    cluster_model,
    event_visible,
    gpus_model,
    hosts_model,
    kernel_owners,
    kernels_model,
)
from notebookos.server_extension.app import NotebookOS
from notebookos.server_extension.permissions import ADMIN_MESSAGE, Access

from .conftest import PREFIX, Api, EventStream

KERNEL = f"{PREFIX}/kernels/{{kernel_id}}"
REPLICA = f"{KERNEL}/replicas/{{replica}}/"  # + the action, as the document names each path
EVENT_TIMEOUT_S = 30


class HubUser(User):
    """As jupyterhub.singleuser's JupyterHubUser: ``hub_user`` is the Hub's model of the user."""

    def __init__(self, name: str, admin: bool = False, groups: tuple[str, ...] = ()) -> None:
        self.hub_user = {"kind": "user", "name": name, "admin": admin, "groups": list(groups)}
        super().__init__(username=name)


@dataclass
class GroupUser(User):
    """A user as a custom identity provider outside JupyterHub may return them, with groups."""

    groups: tuple[str, ...] = ()


USERS: dict[str, User] = {
    user.username: user
    for user in (
        HubUser("alice"),
        HubUser("bob"),
        HubUser("carol", groups=("gpu-admins",)),
        HubUser("dana"),
        HubUser("hubadmin", admin=True),
        GroupUser("erin", groups=("ops",)),
        GroupUser("frank"),
        GroupUser("gina"),
    )
}


class HeaderIdentityProvider(IdentityProvider):
    """The server's token authenticates the request; ``X-Test-User`` names which of USERS makes it."""

    async def get_user(self, handler: Any) -> User | None:
        token_user = await super().get_user(handler)
        name = handler.request.headers.get("X-Test-User")
        return USERS[name] if token_user is not None and name else token_user


def as_users(api: Api, *names: str) -> list[Api]:
    return [api.with_headers(**{"X-Test-User": name}) for name in names]


async def place_kernel(client: ClusterClient, owner: str, cwd: Path) -> str:
    """A kernel placed on the cluster as ``owner``'s own Jupyter server would place it; its id."""
    kernel_id = str(uuid.uuid4())
    await client.create_kernel(
        kernel_id, secrets.token_hex(16), "hmac-sha256", str(cwd), owner=owner, notebook=f"{owner}.ipynb"
    )
    return kernel_id


async def remove_kernels(client: ClusterClient, kernel_ids: list[str]) -> None:
    for kernel_id in kernel_ids:
        try:
            await client.delete_kernel(kernel_id)
        except ClusterError as err:
            if err.status != 404:  # a test shut it down itself
                raise


@pytest.fixture(scope="module")
def cluster_client(cluster_file: str) -> ClusterClient:
    return ClusterClient.from_file(Path(cluster_file))


@pytest.fixture(scope="module")
def pool_kernels(cluster_client: ClusterClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A kernel of alice and one of bob on the session's cluster: owner -> kernel id. Module-scoped, so their
    replicas start once; the tests leave them as they found them."""
    cwd = tmp_path_factory.mktemp("pool-kernels")

    async def place() -> dict[str, str]:
        return {owner: await place_kernel(cluster_client, owner, cwd) for owner in ("alice", "bob")}

    kernels = asyncio.run(place())
    yield kernels
    asyncio.run(remove_kernels(cluster_client, list(kernels.values())))


def hub_config(config: Any, monkeypatch: pytest.MonkeyPatch, **notebookos: set[str]) -> Any:
    """The server as alice's single-user server under JupyterHub, with ``c.NotebookOS`` settings."""
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    config.ServerApp.identity_provider_class = HeaderIdentityProvider
    for name, value in notebookos.items():
        setattr(config.NotebookOS, name, value)
    return config


class TestSharedPoolUnderJupyterHub:
    """Admins: dana by name, carol by group, hubadmin as a Hub admin; alice and bob are users."""

    @pytest.fixture
    def jp_server_config(self, jp_server_config: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
        return hub_config(jp_server_config, monkeypatch, admin_users={"dana"}, admin_groups={"gpu-admins"})

    async def test_users_see_and_act_on_their_own_kernels_only(
        self,
        api: Api,
        pool_kernels: dict[str, str],
        cluster_client: ClusterClient,
        tmp_path: Path,
        event_stream: Callable[..., EventStream],
    ) -> None:
        alice, bob, dana = as_users(api, "alice", "bob", "dana")
        mine, theirs = pool_kernels["alice"], pool_kernels["bob"]
        assert await alice.json("GET", f"{PREFIX}/me") == {"name": "alice", "owner": "alice", "admin": False}
        # alice's stream, from before either kernel was placed.
        placed = await dana.json("GET", f"{PREFIX}/events", query={"kernel": mine, "kind": "kernel_placed"})
        stream = event_stream(**{"Last-Event-ID": str(placed["events"][0]["seq"] - 1), "X-Test-User": "alice"})

        # Lists: each user their own kernel only.
        for user, kernel_id in ((alice, mine), (bob, theirs)):
            listed = (await user.json("GET", f"{PREFIX}/kernels"))["kernels"]
            assert [k["id"] for k in listed] == [kernel_id]
        cluster = await alice.json("GET", f"{PREFIX}/cluster")
        assert cluster["kernels"] == 1 and cluster["replicas"]["total"] == 3
        everything = await dana.json("GET", f"{PREFIX}/cluster")
        assert cluster["hosts"] == everything["hosts"] and cluster["gpus"] == everything["gpus"]  # the pool's
        hosts = (await alice.json("GET", f"{PREFIX}/hosts"))["hosts"]
        assert sum(mine in h["kernels"] for h in hosts) == 3 and {k for h in hosts for k in h["kernels"]} == {mine}
        for template in ("hosts", "gpus", "cluster", "kernels", "events"):
            assert theirs not in (await alice.call("GET", f"{PREFIX}/{template}")).body.decode(), template

        # Another user's kernel is a 404 in the words an unknown kernel gets, for reads and the owner's actions.
        unknown = str(uuid.uuid4())
        said = (await alice.json("GET", KERNEL, 404, kernel_id=unknown))["message"].replace(unknown, "ID")
        assert (await alice.json("GET", KERNEL, 404, kernel_id=theirs))["message"].replace(theirs, "ID") == said
        await alice.json("DELETE", KERNEL, 404, kernel_id=theirs)
        await alice.json("POST", REPLICA + "restart", 404, kernel_id=theirs, replica="0")
        assert (await alice.json("GET", f"{PREFIX}/events", query={"kernel": theirs}))["events"] == []

        # The owner restarts their replicas (a live one: nothing happens); moving work around the pool is admin's.
        restarted = await alice.json("POST", REPLICA + "restart", kernel_id=mine, replica="0")
        assert restarted["id"] == mine
        refusals = [
            await alice.json("POST", REPLICA + action, 403, kernel_id=mine, replica="0", body={"host": "host-4"})
            for action in ("kill", "migrate")
        ]
        refusals += [
            await alice.json("POST", f"{PREFIX}/hosts", 403, body={}),
            await alice.json("PATCH", f"{PREFIX}/hosts/{{name}}", 403, name="host-1", body={"gpus": 1}),
            await alice.json("POST", f"{PREFIX}/hosts/{{name}}/drain", 403, name="host-1"),
            await alice.json("DELETE", f"{PREFIX}/hosts/{{name}}", 403, name="host-1"),
        ]
        assert all(refused["message"] == ADMIN_MESSAGE for refused in refusals), refusals
        assert "c.NotebookOS.admin_users" in ADMIN_MESSAGE and "JupyterHub admin" in ADMIN_MESSAGE

        # bob shuts down a kernel of his; alice could not.
        spare = await place_kernel(cluster_client, "bob", tmp_path)
        try:
            await alice.json("DELETE", KERNEL, 404, kernel_id=spare)
            assert (await bob.call("DELETE", KERNEL, kernel_id=spare)).code == 204
            await dana.json("GET", KERNEL, 404, kernel_id=spare)
        finally:
            await remove_kernels(cluster_client, [spare])

        # alice's stream shows her kernel placed while it is open (logged before the cluster lists the kernel) and
        # closed, her other kernel's events, and the pool's (a host resized by an admin); none of bob's.
        new = await place_kernel(cluster_client, "alice", tmp_path)
        try:
            await stream.until(lambda e: e["kind"] == "kernel_placed" and e["kernel"] == new, EVENT_TIMEOUT_S)
        finally:
            await remove_kernels(cluster_client, [new])
        await stream.until(lambda e: e["kind"] == "kernel_closed" and e["kernel"] == new, EVENT_TIMEOUT_S)
        await dana.json("PATCH", f"{PREFIX}/hosts/{{name}}", name="host-4", body={"gpus": 1})
        seen = await stream.until(lambda e: e["kind"] == "host_resized" and e["host"] == "host-4", EVENT_TIMEOUT_S)
        assert {e["kernel"] for e in seen} == {mine, new, None}, seen
        assert any(e["kind"] == "kernel_placed" and e["kernel"] == mine for e in seen)
        # GET events filters alike; it knows the kernels on the cluster now (so not the closed one).
        events = (await alice.json("GET", f"{PREFIX}/events", query={"since": str(seen[0]["seq"] - 1)}))["events"]
        expected = [e["seq"] for e in seen if e["kernel"] != new]
        assert [e["seq"] for e in events][: len(expected)] == expected

    async def test_admins_see_every_kernel_and_change_the_pool(self, api: Api, pool_kernels: dict[str, str]) -> None:
        """Named in admin_users (dana), in an admin group (carol), a Hub admin (hubadmin)."""
        for admin in as_users(api, "dana", "carol", "hubadmin"):
            me = await admin.json("GET", f"{PREFIX}/me")
            assert me["admin"] is True and me["owner"] == me["name"], me
            listed = {k["id"]: k["owner"] for k in (await admin.json("GET", f"{PREFIX}/kernels"))["kernels"]}
            assert {listed[pool_kernels[owner]] for owner in ("alice", "bob")} == {"alice", "bob"}
            await admin.json("GET", KERNEL, kernel_id=pool_kernels["bob"])
        dana, carol = as_users(api, "dana", "carol")
        assert (await dana.json("PATCH", f"{PREFIX}/hosts/{{name}}", name="host-4", body={"gpus": 2}))["gpus"] == 2
        assert (await carol.json("PATCH", f"{PREFIX}/hosts/{{name}}", name="host-4", body={"gpus": 1}))["gpus"] == 1


class TestJupyterHubWithoutConfiguration:
    @pytest.fixture
    def jp_server_config(self, jp_server_config: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
        return hub_config(jp_server_config, monkeypatch)

    async def test_only_hub_admins_are_admins(self, api: Api, jp_fetch: Any) -> None:
        for name, admin in (("alice", False), ("carol", False), ("hubadmin", True)):
            [user] = as_users(api, name)
            assert (await user.json("GET", f"{PREFIX}/me"))["admin"] is admin, name
            # The dashboard offers its actions by the same rule (the page's settings, before it asks GET me).
            page = (await jp_fetch("notebookos", headers={"X-Test-User": name})).body.decode()
            assert f'"admin": {json.dumps(admin)}' in page, name


class TestPersonalServerWithNamedAdmins:
    """Outside JupyterHub, once admins are named, only they are; every user owns the account's kernels."""

    @pytest.fixture
    def jp_server_config(self, jp_server_config: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
        monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
        jp_server_config.ServerApp.identity_provider_class = HeaderIdentityProvider
        jp_server_config.NotebookOS.admin_users = {"gina"}
        jp_server_config.NotebookOS.admin_groups = {"ops"}
        return jp_server_config

    async def test_named_admins_and_group_members_only(self, api: Api) -> None:
        for name, admin in (("gina", True), ("erin", True), ("frank", False)):
            [user] = as_users(api, name)
            assert await user.json("GET", f"{PREFIX}/me") == {"name": name, "owner": getpass.getuser(), "admin": admin}
        [frank] = as_users(api, "frank")
        refused = await frank.json("POST", f"{PREFIX}/hosts/{{name}}/drain", 403, name="host-1")
        assert refused["message"] == ADMIN_MESSAGE


def test_admins_can_be_named_on_the_command_line() -> None:
    """What the docs tell operators: the options of ``NotebookOS`` on the Jupyter server's command line."""
    app = ServerApp()
    app.parse_command_line(
        ["--NotebookOS.admin_users=alice", "--NotebookOS.admin_users=bob", "--NotebookOS.admin_groups=ops"]
    )
    extension = NotebookOS(config=app.config)  # what linking the extension to the server does with its config
    assert extension.admin_users == {"alice", "bob"} and extension.admin_groups == {"ops"}


def test_models_leave_out_other_users_kernels() -> None:
    """What a GPU held by another user's cell shows (no cell holds a GPU in the tests above): the pool's state, not
    whose."""
    raw = {
        "hosts": [
            {
                "name": "host-1",
                "replicas": 2,
                "gpus": 2,
                "idle_gpus": 0,
                "subscribed_gpus": 2,
                "subscription_ratio": 1.0,
                "devices": [
                    {"device": 0, "state": "committed", "kernel": "ka", "replica": 0, "since": 1.0},
                    {"device": 1, "state": "committed", "kernel": "kb", "replica": 0, "since": 2.0},
                ],
            }
        ],
        "kernels": [
            {"id": kernel_id, "owner": owner, "replicas": [{"replica": 0, "host": "host-1", "alive": True}]}
            for kernel_id, owner in (("ka", "alice"), ("kb", "bob"))
        ],
    }
    alice, admin = Access(owner="alice", admin=False), Access(owner="alice", admin=True)
    assert [(g["kernel"], g["replica"], g["state"]) for g in gpus_model(raw, alice.sees)] == [
        ("ka", 0, "committed"),
        (None, None, "committed"),
    ]
    assert [g["kernel"] for g in gpus_model(raw, admin.sees)] == ["ka", "kb"]
    [host] = hosts_model(raw, alice.sees)
    assert host["kernels"] == ["ka"] and host["replicas"] == host["replicas_alive"] == 2
    assert [k["id"] for k in kernels_model(raw, alice.sees)] == ["ka"]
    cluster = cluster_model(raw, alice.sees)
    assert cluster["kernels"] == 1 and cluster["replicas"]["total"] == 1 and cluster["gpus"]["committed"] == 2
    owners = kernel_owners(raw)
    events = [{"kernel": None}, {"kernel": "ka"}, {"kernel": "kb"}, {"kernel": "gone"}]
    assert [event_visible(e, owners, alice.sees) for e in events] == [True, True, False, False]
