"""Which versions of a model to load, by its ``version_policy``."""

from __future__ import annotations

from collections.abc import Sequence

from tritium._proto import model_config_pb2 as mc


def select_versions(policy: mc.ModelVersionPolicy, available: Sequence[int]) -> list[int]:
    """Versions to load, ascending: ``latest`` (default 1), ``all`` or ``specific``."""
    available = sorted(available)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return available
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in available if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    count = max(count, 1)
    return available[-count:]
