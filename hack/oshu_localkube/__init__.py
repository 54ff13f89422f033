"""A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) built from
pinned sources, plus kubectl and helm, for tests and the demo. See docs/local-cluster.md."""

from .cluster import ClusterError, CommandError, LocalCluster

__all__ = ["ClusterError", "CommandError", "LocalCluster"]
