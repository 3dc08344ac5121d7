"""The provider a cluster service's options ask for (``notebookos cluster --provider ...``)."""

from __future__ import annotations

import argparse
from importlib.util import find_spec
from pathlib import Path

from .base import HostProvider, ProviderError

PROVIDERS = ("local", "docker", "kubernetes")


def add_provider_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where added hosts come from (the autoscaler's and the operator's)")
    group.add_argument(
        "--provider",
        choices=PROVIDERS,
        default="local",
        help="local: logical hosts on this machine (default); docker: agent containers on this "
        "machine's Docker daemon (DOCKER_HOST); kubernetes: agent pods of the agent pool",
    )
    group.add_argument(
        "--provider-image",
        default=None,
        metavar="IMAGE",
        help="docker: the image agent containers run (default: notebookos:VERSION)",
    )
    group.add_argument(
        "--provider-network",
        default="bridge",
        metavar="NETWORK",
        help="docker: the network agent containers join (default bridge; 'host' needs --provider-address)",
    )
    group.add_argument(
        "--provider-address",
        action="append",
        default=[],
        metavar="IP",
        help="docker with --provider-network host: an address of this machine an agent may use "
        "(repeatable; one per agent)",
    )
    group.add_argument(
        "--provider-mount",
        action="append",
        default=[],
        metavar="SRC:DST[:ro]",
        help="docker: a folder agent containers and their replicas see, e.g. the users' home folders (repeatable)",
    )
    group.add_argument(
        "--provider-python",
        default=None,
        metavar="PATH",
        help="docker: the Python that runs the agent in the image (default: its notebookos command)",
    )
    group.add_argument(
        "--provider-join-url",
        default=None,
        metavar="URL",
        help="docker: the address agent containers reach this service at (default: its own URL)",
    )
    group.add_argument("--kubernetes-namespace", default="notebookos", help="kubernetes: the agent pool's namespace")
    group.add_argument(
        "--kubernetes-deployment",
        default="notebookos-agent-pool",
        help="kubernetes: the Deployment of agent pods to scale (deploy/kubernetes/agent-pool.yaml)",
    )


def make_provider(args: argparse.Namespace, url: str) -> HostProvider | None:
    """The provider for ``args`` (None: the embedded cluster's logical hosts); ``url``: this service's. Raises
    ProviderError, with what to do, when it cannot work here."""
    if args.provider == "local":
        return None
    if args.provider == "docker":
        if args.join_token_file is None:
            raise ProviderError("--provider docker needs --join-token-file: the agents it starts join with it")
        # The providers import their SDK only where they use it, so importing them would not tell.
        if find_spec("docker") is None:
            raise ProviderError("--provider docker needs the Docker SDK: pip install 'notebookos[docker]'")
        from .docker import DockerProvider
        from ..runtime.factory import default_image

        return DockerProvider(
            args.provider_join_url or url,
            Path(args.join_token_file),
            args.provider_image or default_image(),
            max_hosts=args.max_hosts,
            network=args.provider_network,
            addresses=tuple(args.provider_address),
            mounts=tuple(args.provider_mount),
            python=args.provider_python,
        )
    if find_spec("kubernetes") is None:
        raise ProviderError("--provider kubernetes needs the Kubernetes client: pip install 'notebookos[kubernetes]'")
    from .kubernetes import KubernetesProvider

    return KubernetesProvider(args.kubernetes_namespace, args.kubernetes_deployment, max_hosts=args.max_hosts)
