"""Hosts as agent pods on Kubernetes: the cluster adds a host by scaling the agent pool up (a Deployment of
``notebookos agent`` pods, deploy/kubernetes/agent-pool.yaml), and the node autoscaler adds a GPU node when the new
pod finds none. It removes a host by marking that host's pod the cheapest to delete and scaling the pool down, so
that the ReplicaSet deletes exactly that pod.

Agent pods name themselves after their node (``--name=$(NODE_NAME)``), which the provider cannot know before the
pod is scheduled: a host it adds is shown ``starting`` under no name, and the next agent that joins takes its place.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .base import HostProvider, PendingHost, ProviderError

log = logging.getLogger(__name__)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


class KubernetesProvider(HostProvider):
    """``apps`` and ``core``: the client's AppsV1Api and CoreV1Api (default: from the pod's service account, or
    the local kubeconfig)."""

    def __init__(
        self,
        namespace: str = "notebookos",
        deployment: str = "notebookos-agent-pool",
        max_hosts: int | None = None,
        apps: Any = None,
        core: Any = None,
    ) -> None:
        from kubernetes import client, config

        if apps is None or core is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        self.apps = apps or client.AppsV1Api()
        self.core = core or client.CoreV1Api()
        self.namespace = namespace
        self.deployment = deployment
        self.max_hosts = max_hosts

    def add_host(self, gpus: int) -> PendingHost:
        replicas = self._replicas()
        if self.max_hosts is not None and replicas >= self.max_hosts:
            raise ProviderError(
                f"the agent pool {self.namespace}/{self.deployment} already runs {replicas} agent(s), "
                f"the provider's most ({self.max_hosts})"
            )
        self._scale(replicas + 1)
        return PendingHost(name=None, gpus=gpus, since=time.time())

    def remove_host(self, host: Any) -> None:
        """Delete the pod of ``host``'s agent (on the node of that name) by scaling the pool down by one."""
        from kubernetes.client.exceptions import ApiException

        pod = self._pod_on(host.name)
        if pod is None:
            log.warning("no pod of %s runs on node %s; scaling the pool down anyway", self.deployment, host.name)
        else:
            try:
                self.core.patch_namespaced_pod(
                    pod, self.namespace, {"metadata": {"annotations": {DELETION_COST: "-1000000"}}}
                )
            except ApiException as err:
                raise ProviderError(f"could not mark pod {pod} for deletion: {_reason(err)}") from None
        self._scale(max(self._replicas() - 1, 0))

    def resize_host(self, host: Any, gpus: int) -> None:
        raise ProviderError("a node's GPUs are fixed: the agent pool's GPU request decides them (agent-pool.yaml)")

    def _replicas(self) -> int:
        from kubernetes.client.exceptions import ApiException

        try:
            scale = self.apps.read_namespaced_deployment_scale(self.deployment, self.namespace)
        except ApiException as err:
            raise ProviderError(
                f"could not read the agent pool {self.namespace}/{self.deployment}: {_reason(err)}; "
                "apply deploy/kubernetes (agent-pool.yaml, rbac.yaml)"
            ) from None
        return int(scale.spec.replicas or 0) if scale.spec is not None else 0

    def _scale(self, replicas: int) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.apps.patch_namespaced_deployment_scale(
                self.deployment, self.namespace, {"spec": {"replicas": replicas}}
            )
        except ApiException as err:
            raise ProviderError(
                f"could not scale {self.namespace}/{self.deployment} to {replicas}: {_reason(err)}"
            ) from None
        log.info("scaled the agent pool %s/%s to %d", self.namespace, self.deployment, replicas)

    def _pod_on(self, node: str) -> str | None:
        deployment = self.apps.read_namespaced_deployment(self.deployment, self.namespace)
        labels = deployment.spec.selector.match_labels
        if labels is None:
            raise ProviderError(
                f"the agent pool {self.namespace}/{self.deployment} selects its pods without matchLabels; "
                "apply deploy/kubernetes (agent-pool.yaml)"
            )
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=selector, field_selector=f"spec.nodeName={node}"
        )
        if not pods.items or pods.items[0].metadata is None:
            return None
        return pods.items[0].metadata.name


def _reason(err: Any) -> str:
    return f"{err.status} {err.reason}" + (
        " (check the RBAC of deploy/kubernetes/rbac.yaml)" if err.status == 403 else ""
    )
