"""A JupyterHub on one machine whose users' single-user servers all run their kernels on one shared notebookos
cluster (``notebookos cluster``), with the idle culler. See README.md beside this file.

    jupyterhub -f deploy/jupyterhub/jupyterhub_config.py

Everything that differs between sites comes from the environment, so this file is used as it is (the test in
tests/hub runs a Hub with it):

NOTEBOOKOS_CLUSTER_URL         the cluster service every single-user server uses (default http://127.0.0.1:8765)
NOTEBOOKOS_CLUSTER_TOKEN_FILE  its join token, readable by every user's server (default /etc/notebookos/join-token)
NOTEBOOKOS_CLUSTER_CA_FILE     a CA (PEM) to verify the cluster's https against, if its token does not pin one
NOTEBOOKOS_HUB_USERS           users allowed to log in, comma-separated (default: none but the admins)
NOTEBOOKOS_HUB_ADMINS          JupyterHub admins, comma-separated: they administer the GPU pool too
NOTEBOOKOS_POOL_ADMINS         users who administer the GPU pool without being Hub admins: members of the Hub group
NOTEBOOKOS_ADMIN_GROUP         that group's name (default notebookos-admins)
NOTEBOOKOS_CULL_IDLE_S         stop a user's server (and its kernels, which frees their replicas) after this many
                               seconds without activity (default 3600; 0: no culler)
NOTEBOOKOS_HUB_BIND_URL        where the Hub's proxy listens (default http://127.0.0.1:8000/)

A trial without system accounts: set NOTEBOOKOS_HUB_PASSWORD (8+ characters, every user's password) and
NOTEBOOKOS_HUB_ADMIN_PASSWORD (32+ characters, the admins'); users then log in with JupyterHub's shared-password
authenticator and every user's server runs as the account running the Hub, with its home folder under
NOTEBOOKOS_HUB_HOMES (default /tmp/notebookos-hub/{username}). That is no protection between users: for real
users leave both unset, run the Hub as root, and users log in with their system accounts (PAM), each server
running as its user.
"""
import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821  (defined by traitlets when it loads this file)


def _names(variable: str) -> set[str]:
    return {name.strip() for name in os.environ.get(variable, "").split(",") if name.strip()}


# The environment the Hub runs from (its virtual environment's bin/): the single-user servers and the culler run
# from it too, so notebookos, its server extension and its kernelspec are the Hub's.
BIN = Path(sys.executable).parent
CLUSTER_URL = os.environ.get("NOTEBOOKOS_CLUSTER_URL", "http://127.0.0.1:8765")
CLUSTER_TOKEN_FILE = os.environ.get("NOTEBOOKOS_CLUSTER_TOKEN_FILE", "/etc/notebookos/join-token")
CLUSTER_CA_FILE = os.environ.get("NOTEBOOKOS_CLUSTER_CA_FILE", "")
ADMIN_GROUP = os.environ.get("NOTEBOOKOS_ADMIN_GROUP", "notebookos-admins")
CULL_IDLE_S = int(os.environ.get("NOTEBOOKOS_CULL_IDLE_S", "3600"))

SERVER_ARGS: list[str] = []  # options of every user's server besides the cluster's

c.JupyterHub.bind_url = os.environ.get("NOTEBOOKOS_HUB_BIND_URL", "http://127.0.0.1:8000/")

# --- Who logs in, and who administers the pool --------------------------------------------------------------------
# Hub admins are pool admins (the extension reads `admin` from the Hub's user model); so are the members of
# ADMIN_GROUP (its `groups`), which lets an operator hand out the pool without handing out the Hub.
c.Authenticator.admin_users = _names("NOTEBOOKOS_HUB_ADMINS")
c.Authenticator.allowed_users = _names("NOTEBOOKOS_HUB_USERS") | _names("NOTEBOOKOS_POOL_ADMINS")
c.JupyterHub.load_groups = {ADMIN_GROUP: {"users": sorted(_names("NOTEBOOKOS_POOL_ADMINS"))}}

if os.environ.get("NOTEBOOKOS_HUB_PASSWORD"):
    c.JupyterHub.authenticator_class = "shared-password"
    c.SharedPasswordAuthenticator.user_password = os.environ["NOTEBOOKOS_HUB_PASSWORD"]
    if os.environ.get("NOTEBOOKOS_HUB_ADMIN_PASSWORD"):
        c.SharedPasswordAuthenticator.admin_password = os.environ["NOTEBOOKOS_HUB_ADMIN_PASSWORD"]
    c.JupyterHub.spawner_class = "simple"  # every server as this account: a trial, not a separation of users
    homes = os.environ.get("NOTEBOOKOS_HUB_HOMES", "/tmp/notebookos-hub")
    c.SimpleLocalProcessSpawner.home_dir_template = f"{homes}/{{username}}"
    # A trial Hub run as root (in a container, say) runs every server as root, which Jupyter Server refuses unless
    # told; with system accounts each server runs as its user instead.
    if os.geteuid() == 0:
        SERVER_ARGS.append("--allow-root")

# --- Every user's server on the shared cluster --------------------------------------------------------------------
# jupyterhub-singleuser runs Jupyter Server with the Hub's login and JupyterLab; installing notebookos enabled its
# server extension there, and these options (c.NotebookOS.*) point its kernels and its API at the shared cluster.
# Each server starts the user's kernels with the Hub user as their owner ($JUPYTERHUB_USER), and shows a user who is
# not a pool admin only their own kernels.
c.Spawner.cmd = [str(BIN / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.args = [
    *SERVER_ARGS,
    f"--NotebookOS.cluster_url={CLUSTER_URL}",
    f"--NotebookOS.cluster_token_file={CLUSTER_TOKEN_FILE}",
    f"--NotebookOS.admin_groups={ADMIN_GROUP}",
    *([f"--NotebookOS.cluster_ca_file={CLUSTER_CA_FILE}"] if CLUSTER_CA_FILE else []),
]

# --- The idle culler ----------------------------------------------------------------------------------------------
# A server without activity for CULL_IDLE_S is stopped; stopping it shuts its kernels down, which gives their
# replicas' memory back to the pool (GPUs are only held while a cell runs). Activity is what the server reports:
# requests and kernel messages, so a cell that runs silently for longer than CULL_IDLE_S counts as idle.
if CULL_IDLE_S > 0:
    c.JupyterHub.load_roles = [{
        "name": "notebookos-idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }]
    c.JupyterHub.services = [{
        "name": "idle-culler",
        "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={CULL_IDLE_S}"],
    }]
