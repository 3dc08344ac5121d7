"""Who may see and do what on the shared GPU pool: for the user of a request, the name their kernels are owned by and
whether they are a pool admin.

**Owners.** A kernel carries the owner its provisioner recorded, :func:`kernel_owner`: the JupyterHub user whose
single-user server started it, else the account running the Jupyter server. A request's user is matched against
the same notion (:meth:`PoolAdmins.owner`): under JupyterHub the hub user's name; on a server outside JupyterHub
the account running it, which every user of that server stands for (the kernels it starts carry that name, and the
user of a token login has a generated one).

**Admins** see every kernel and change the pool: hosts, other users' kernels, migrations, fault drills. Being one
takes both

- action ``write`` on resource ``notebookos`` from the server's Jupyter authorizer, so that an operator's
  ``ServerApp.authorizer_class`` can still make anyone read-only, and
- this extension's rule: the user's name is in ``c.NotebookOS.admin_users``, one of their groups is in
  ``c.NotebookOS.admin_groups`` (JupyterHub's groups, or a ``groups`` attribute of the user a custom identity
  provider returns), or they are a JupyterHub admin. With neither set, the users of a server outside JupyterHub (a
  personal ``notebookos lab``) are admins, as before there were rules; under JupyterHub only Hub admins are.

Nothing here imports Jupyter Server, so the provisioner can import :func:`kernel_owner` without loading it; the
options themselves live on the extension (``NotebookOS`` in :mod:`.app`), which hands them here as
:class:`PoolAdmins`.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jupyter_core.utils import ensure_async

if TYPE_CHECKING:
    from jupyter_server.auth import User
    from jupyter_server.base.handlers import JupyterHandler

RESOURCE = "notebookos"  # the Jupyter authorization resource of every endpoint
HUB_USER_ENV = "JUPYTERHUB_USER"  # set by JupyterHub's spawners on each user's single-user server
SETTING = "notebookos_permissions"  # where the server's tornado settings hold the PoolAdmins

WRITE_MESSAGE = (
    f"This server's authorizer (ServerApp.authorizer_class) does not grant you action 'write' on "
    f"resource '{RESOURCE}', which every change needs, from shutting down your own kernel to the admin "
    "actions; reading needs 'read' only."
)
ADMIN_MESSAGE = (
    "This action changes the shared GPU pool and needs the notebookos admin permission. An operator "
    "grants it with c.NotebookOS.admin_users or c.NotebookOS.admin_groups in jupyter_server_config.py "
    "(or --NotebookOS.admin_users=NAME, once per name), or by making you a JupyterHub admin."
)


def kernel_owner(env: Mapping[str, str] = os.environ) -> str:
    """The owner recorded for the kernels a Jupyter server starts, from its environment: the JupyterHub user whose
    single-user server it is, else the account running it."""
    return env.get(HUB_USER_ENV) or getpass.getuser()


def under_jupyterhub() -> bool:
    return bool(os.environ.get(HUB_USER_ENV))


@dataclass(frozen=True)
class Access:
    """What the user of one request may see and do."""

    owner: str  # the owner name their kernels carry
    admin: bool  # a pool admin: sees every kernel and may change the pool

    def sees(self, owner: str | None) -> bool:
        """Whether a kernel of ``owner`` is visible to this user, and theirs to act on as its owner."""
        return self.admin or owner == self.owner


@dataclass(frozen=True)
class PoolAdmins:
    """Who administers the pool: ``c.NotebookOS.admin_users`` and ``admin_groups`` as the extension read them."""

    admin_users: frozenset[str] = frozenset()
    admin_groups: frozenset[str] = frozenset()

    def owner(self, user: User) -> str:
        """The owner name of the user's kernels (see the module's docstring)."""
        return user.username if under_jupyterhub() else kernel_owner()

    def is_pool_admin(self, user: User) -> bool:
        """The extension's rule alone; :meth:`access` also asks the server's authorizer."""
        # JupyterHub's identity provider returns a JupyterHubUser whose hub_user is the Hub's model of the user,
        # which includes `admin` and `groups`.
        hub_model: dict[str, Any] = getattr(user, "hub_user", None) or {}
        if hub_model.get("admin") or user.username in self.admin_users:
            return True
        groups = {*(hub_model.get("groups") or ()), *(getattr(user, "groups", None) or ())}
        if groups & self.admin_groups:
            return True
        return not (self.admin_users or self.admin_groups or under_jupyterhub())

    async def access(self, handler: JupyterHandler) -> Access:
        """What the handler's (authenticated) user may see and do; the authorizer may answer asynchronously."""
        user = handler.current_user
        allowed = await ensure_async(handler.authorizer.is_authorized(handler, user, "write", RESOURCE))
        return Access(owner=self.owner(user), admin=bool(allowed) and self.is_pool_admin(user))

    def describe(self) -> str:
        """Who administers the pool, in a sentence for the server's log."""
        if self.admin_users or self.admin_groups:
            named = [
                f"users {', '.join(sorted(self.admin_users))}" if self.admin_users else "",
                f"members of {', '.join(sorted(self.admin_groups))}" if self.admin_groups else "",
            ]
            return f"pool admins: {'; '.join(filter(None, named))}; JupyterHub admins"
        if under_jupyterhub():
            return "pool admins: JupyterHub admins (set c.NotebookOS.admin_users or admin_groups to add others)"
        return (
            f"pool admins: this server's users, who own the kernels of account {kernel_owner()} (set "
            "c.NotebookOS.admin_users or admin_groups to name the admins)"
        )


async def request_access(handler: JupyterHandler) -> Access:
    """What the user of the handler's request may see and do, by the server's ``NotebookOS`` configuration."""
    permissions: PoolAdmins = handler.settings[SETTING]
    return await permissions.access(handler)
