"""Scheduling that does not stall (item 4): the rendered topologySpreadConstraints, PDBs and tolerations,
run through the PodTopologySpread filter as the Kubernetes scheduler applies it
(kubernetes.io/docs/concepts/scheduling-eviction/topology-spread-constraints), on small model clusters:

- 3 CPU nodes in 3 zones, a tainted GPU node and a tainted control-plane node: a rolling update's surge
  API pod must find a node, and so must the pod a node drain evicts (with prod's PDB).
- 3 CPU nodes without zone labels (bare metal): every replica must find a node.

The filter, for each constraint with whenUnsatisfiable DoNotSchedule: a node without the topologyKey
label is not a candidate; the domains are the values of that label on the nodes that pass the pod's
nodeSelector (nodeAffinityPolicy Honor, the default) and tolerate its taints (only with nodeTaintsPolicy
Honor: the default, Ignore, counts a tainted node as an empty domain); a pod matches when the
labelSelector and the incoming pod's values of matchLabelKeys match; skew = matching pods in the
candidate's domain + 1 - the fewest in any domain, at most maxSkew. ScheduleAnyway only scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from scripts.chart import of_kind, refusal, render

GPU_TAINT = {"key": "nvidia.com/gpu", "effect": "NoSchedule"}
CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
CORDONED = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}


@dataclass
class Node:
    name: str
    labels: dict
    taints: list = field(default_factory=list)

    def __post_init__(self):
        self.labels = {"kubernetes.io/hostname": self.name, **self.labels}


@dataclass
class Pod:
    labels: dict
    node: str


def tolerates(pod_spec: dict, node: Node) -> bool:
    def tolerated(taint):
        return any(t.get("operator") == "Exists" and t.get("key") in (None, taint["key"])
                   or t.get("key") == taint["key"] and t.get("value") == taint.get("value")
                   for t in pod_spec.get("tolerations", []))
    return all(tolerated(taint) for taint in node.taints if taint["effect"] in ("NoSchedule", "NoExecute"))


def selected(pod_spec: dict, node: Node) -> bool:
    return pod_spec.get("nodeSelector", {}).items() <= node.labels.items()


def spread_allows(pod_labels: dict, pod_spec: dict, node: Node, nodes: list[Node], pods: list[Pod]) -> bool:
    for constraint in pod_spec.get("topologySpreadConstraints", []):
        if constraint["whenUnsatisfiable"] != "DoNotSchedule":
            continue
        key = constraint["topologyKey"]
        if key not in node.labels:
            return False
        wanted = {**constraint["labelSelector"]["matchLabels"],
                  **{k: pod_labels[k] for k in constraint.get("matchLabelKeys", [])}}
        eligible = [n for n in nodes if key in n.labels
                    and (constraint.get("nodeAffinityPolicy", "Honor") == "Ignore" or selected(pod_spec, n))
                    and (constraint.get("nodeTaintsPolicy", "Ignore") == "Ignore" or tolerates(pod_spec, n))]
        counts = {n.labels[key]: 0 for n in eligible}
        by_name = {n.name: n for n in nodes}
        for pod in pods:
            where = by_name[pod.node]
            if where in eligible and wanted.items() <= pod.labels.items():
                counts[where.labels[key]] += 1
        if counts.get(node.labels[key], 0) + 1 - min(counts.values(), default=0) > constraint["maxSkew"]:
            return False
    return True


def place(pod_labels: dict, pod_spec: dict, nodes: list[Node], pods: list[Pod],
          full: frozenset = frozenset()) -> str | None:
    """The first node the pod may go to, or None (Pending). `full`: nodes without room for it (still domains)."""
    for node in nodes:
        if node.name in full or CORDONED in node.taints:
            continue
        if not selected(pod_spec, node) or not tolerates(pod_spec, node):
            continue
        if spread_allows(pod_labels, pod_spec, node, nodes, pods):
            return node.name
    return None


def api_pod(docs: list[dict]) -> tuple[dict, dict]:
    (api,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-api")]
    return api["spec"]["template"]["metadata"]["labels"], api["spec"]["template"]["spec"]


def cluster() -> list[Node]:
    return [Node("cpu-1", {"topology.kubernetes.io/zone": "a"}), Node("cpu-2", {"topology.kubernetes.io/zone": "b"}),
            Node("cpu-3", {"topology.kubernetes.io/zone": "c"}),
            Node("gpu-1", {"topology.kubernetes.io/zone": "a", "nvidia.com/gpu.present": "true"}, [GPU_TAINT]),
            Node("control-plane", {}, [CONTROL_PLANE_TAINT])]


def deploy(labels: dict, spec: dict, nodes: list[Node], replicas: int, revision: str) -> list[Pod]:
    pods: list[Pod] = []
    for i in range(replicas):
        pod_labels = {**labels, "pod-template-hash": revision}
        node = place(pod_labels, spec, nodes, pods)
        assert node, f"replica {i + 1} of {replicas} found no node: {[p.node for p in pods]}"
        pods.append(Pod(pod_labels, node))
    return pods


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_a_rolling_update_places_its_surge_pod_beside_tainted_nodes(environment):
    docs = render(environment)
    labels, spec = api_pod(docs)
    (api,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-api")]
    replicas = api["spec"]["replicas"]
    nodes = cluster()
    pods = deploy(labels, spec, nodes, replicas, "old")
    # maxUnavailable 0, maxSurge 1: the new revision's first pod must be placed before any old one goes.
    surge = {**labels, "pod-template-hash": "new"}
    assert place(surge, spec, nodes, pods), f"{environment}: the rollout's surge pod stays Pending"


def test_a_drain_can_proceed_node_after_node_with_prods_budget():
    docs = render("prod")
    labels, spec = api_pod(docs)
    (api,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-api")]
    (pdb,) = [p for p in of_kind(docs, "PodDisruptionBudget") if p["metadata"]["name"].endswith("-api")]
    replicas, min_available = api["spec"]["replicas"], pdb["spec"]["minAvailable"]
    nodes = cluster()
    pods = deploy(labels, spec, nodes, replicas, "v1")
    for drained in ("cpu-1", "cpu-2", "cpu-3"):
        # Eviction respects the budget: the pods that are running now (all placed) less the evicted one.
        assert len(pods) - 1 >= min_available, f"the PDB blocks draining {drained}"
        node = next(n for n in nodes if n.name == drained)
        node.taints.append(CORDONED)
        evicted = [p for p in pods if p.node == drained]
        pods = [p for p in pods if p.node != drained]
        for pod in evicted:
            where = place(pod.labels, spec, nodes, pods)
            assert where, f"the pod evicted from {drained} stays Pending: the next drain would wait forever"
            pods.append(Pod(pod.labels, where))
        node.taints.remove(CORDONED)  # upgraded and back


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_nodes_without_zone_labels_take_pods(environment):
    labels, spec = api_pod(render(environment))
    nodes = [Node(f"metal-{i}", {}) for i in range(1, 4)]
    deploy(labels, spec, nodes, 3, "v1")


def test_an_autoscaled_pool_is_not_held_back_by_a_full_node():
    docs = render("prod")
    (worker,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-worker-default")]
    labels, spec = worker["spec"]["template"]["metadata"]["labels"], worker["spec"]["template"]["spec"]
    nodes, pods = cluster(), []
    for i in range(8):  # KEDA scales up while cpu-1 has no room left
        pod_labels = {**labels, "pod-template-hash": "v1"}
        node = place(pod_labels, spec, nodes, pods, full=frozenset({"cpu-1"}))
        assert node, f"worker {i + 1} stays Pending although cpu-2 and cpu-3 have room"
        pods.append(Pod(pod_labels, node))


def test_free_form_constraints_replace_the_defaults():
    docs = render("prod", {"topologySpread.constraints[0].maxSkew": 2,
                           "topologySpread.constraints[0].topologyKey": "kubernetes.io/hostname",
                           "topologySpread.constraints[0].whenUnsatisfiable": "DoNotSchedule"})
    labels, spec = api_pod(docs)
    (constraint,) = spec["topologySpreadConstraints"]
    assert constraint["maxSkew"] == 2
    assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"


@pytest.mark.parametrize("overrides, message", [
    ({"api.replicas": 1, "api.pdb.minAvailable": 1}, "api.pdb.minAvailable (1) must be below api.replicas (1)"),
    ({"api.replicas": 2, "api.pdb.minAvailable": 2}, "api.pdb.minAvailable (2) must be below api.replicas (2)"),
], ids=["one-of-one", "two-of-two"])
def test_a_budget_that_blocks_every_drain_is_refused(overrides, message):
    assert message in refusal("prod", overrides)
