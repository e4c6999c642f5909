"""Trial resources: will one trial fit on the cluster (checked before any trial starts), and how many threads a
running CPU trial may take when cores are idle (`lent_threads`).

Ray Tune queues a trial whose resource request no node can satisfy and waits for the cluster to grow, which
on a fixed cluster (a laptop, a static RayCluster) means forever, with Ray's autoscaler warnings as the only
output. A sweep therefore checks its per-trial request against the nodes that are alive and fails in one
line naming the field, what it asked for and what the largest node has. Autoscaling clusters, whose nodes
appear on demand, turn the check off with `resources.require_fit: false`.
"""

from __future__ import annotations

from typing import Any, Iterable

from orchestrator.config import ResourcesConfig

_FIELDS = (("cpus_per_trial", "CPU", "CPUs"), ("gpus_per_trial", "GPU", "GPUs"))


def check_trial_fits(resources: ResourcesConfig, nodes: Iterable[dict[str, Any]]) -> None:
    """Raise ValueError unless some alive node holds a whole trial's request (`nodes` as `ray.nodes()`)."""
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    if not alive:
        raise ValueError("the Ray cluster has no alive node")
    for field, key, unit in _FIELDS:
        asked = getattr(resources, field)
        if asked <= 0:
            continue
        largest = max(float(node.get(key, 0.0)) for node in alive)
        fitting = [node for node in alive if float(node.get(key, 0.0)) >= asked]
        if not fitting:
            total = sum(float(node.get(key, 0.0)) for node in alive)
            raise ValueError(
                f"resources.{field}={asked:g}: no node of the Ray cluster has {asked:g} {unit} "
                f"(largest node: {largest:g}, cluster total: {total:g}); lower it, or set resources.require_fit: false "
                f"on an autoscaling cluster"
            )
    both = [node for node in alive if all(float(node.get(key, 0.0)) >= getattr(resources, field) for field, key, _ in _FIELDS)]
    if not both:
        raise ValueError(
            f"resources: no single node has both cpus_per_trial={resources.cpus_per_trial:g} CPUs and "
            f"gpus_per_trial={resources.gpus_per_trial:g} GPUs"
        )


def lent_threads(own_cpus: int, total_cpus: float, free_cpus: float, cpus_per_trial: float,
                 max_concurrent_trials: int | None = None) -> int:
    """Torch threads for a running CPU trial on a one-node cluster in a sweep's tail, when fewer trials are left
    than slots and a core would otherwise idle until the last one ends. Only the CPUs of the sweep's own empty
    slots are lent (`max_concurrent_trials` caps the slots, so a cap left to keep cores free keeps them free),
    shared evenly among the running trials ((total - free) / cpus_per_trial of them), in whole threads; a trial
    never gets fewer than its own CPUs."""
    running = max(1, round((total_cpus - free_cpus) / cpus_per_trial))
    slots = int(total_cpus // cpus_per_trial)
    if max_concurrent_trials is not None:
        slots = min(slots, max_concurrent_trials)
    lendable = min(max(0.0, free_cpus), max(0, slots - running) * cpus_per_trial)
    return own_cpus + int(lendable // running)


def check_cluster_fits(resources: ResourcesConfig) -> None:
    """`check_trial_fits` against the connected Ray cluster (no-op when `require_fit` is off)."""
    if not resources.require_fit:
        return
    import ray

    check_trial_fits(resources, ray.nodes())
