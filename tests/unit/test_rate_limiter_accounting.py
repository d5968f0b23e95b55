"""The rate limiter's accounting and order, without a server: Triton's resource counts and messages, the
staged heap by execution count × priority, and the head that is never passed."""

from __future__ import annotations

import pytest

from tritium._proto import model_config_pb2 as mc
from tritium.backends.base import InstanceSpec
from tritium.core.errors import InvalidArgumentError
from tritium.scheduler.rate_limiter import RateLimiter, parse_resource


def specs(name: str, resources: list[tuple[str, int, bool]], count: int = 1, priority: int = 0,
          kind: str = "KIND_CPU", device: int = 0) -> list[InstanceSpec]:
    group = mc.ModelInstanceGroup(name=name, count=count)
    group.rate_limiter.priority = priority
    for resource, number, is_global in resources:
        r = group.rate_limiter.resources.add(name=resource, count=number)
        setattr(r, "global", is_global)
    return [InstanceSpec(f"{name}_{i}", kind, device, group) for i in range(count)]


def test_default_counts_are_the_most_any_instance_asks_for():
    limiter = RateLimiter()
    a = limiter.register(specs("a", [("R", 2, False)]))[0]
    b, c = limiter.register(specs("b", [("R", 1, False)], count=2))
    granted: list[str] = []
    a.stage(lambda: granted.append("a"))
    b.stage(lambda: granted.append("b"))
    assert granted == ["a"]  # a holds both copies: b waits
    a.release()
    assert granted == ["a", "b"]
    c.stage(lambda: granted.append("c"))
    assert granted == ["a", "b", "c"]  # two copies: both b instances run together


def test_a_staged_head_is_never_passed():
    limiter = RateLimiter()
    big = limiter.register(specs("big", [("R", 2, False)]))[0]
    small1, small2 = limiter.register(specs("small", [("R", 1, False)], count=2))
    granted: list[str] = []
    small1.stage(lambda: granted.append("small1"))
    big.stage(lambda: granted.append("big"))  # needs 2: waits for small1
    small2.stage(lambda: granted.append("small2"))  # would fit, but big is ahead (same scaled priority, earlier)
    assert granted == ["small1"]
    small1.release()
    assert granted == ["small1", "big"]
    big.release()
    assert granted == ["small1", "big", "small2"]


def test_priority_scales_the_execution_count():
    """Two instances of each model always waiting for one copy of R: the one of lowest executions × priority
    goes next, so priority 3 gets a third of the turns of priority 1."""
    limiter = RateLimiter()
    high = limiter.register(specs("high", [("R", 1, False)], count=2, priority=1))
    low = limiter.register(specs("low", [("R", 1, False)], count=2, priority=3))
    running: list = []
    order: list[str] = []
    for limit in high + low:
        limit.stage(lambda limit=limit: (running.append(limit), order.append(limit.name[:-2])))  # type: ignore[misc]
    for _ in range(40):
        limit = running.pop()
        limit.release()  # the next one is granted here
        limit.stage(lambda limit=limit: (running.append(limit), order.append(limit.name[:-2])))  # type: ignore[misc]
    assert abs(order.count("high") - 3 * order.count("low")) <= 3
    assert order[:4] == ["high", "high", "low", "low"]  # nobody executed yet: in staging order


def test_global_resources_are_shared_by_every_device():
    limiter = RateLimiter()
    gpu0 = limiter.register(specs("g0", [("G", 1, True)], kind="KIND_GPU", device=0))[0]
    gpu1 = limiter.register(specs("g1", [("G", 1, True)], kind="KIND_GPU", device=1))[0]
    local0 = limiter.register(specs("l0", [("L", 1, False)], kind="KIND_GPU", device=0))[0]
    local1 = limiter.register(specs("l1", [("L", 1, False)], kind="KIND_GPU", device=1))[0]
    granted: list[str] = []
    for limit, label in ((local0, "l0"), (local1, "l1"), (gpu0, "g0"), (gpu1, "g1")):
        limit.stage(lambda label=label: granted.append(label))  # type: ignore[misc]
    assert granted == ["l0", "l1", "g0"]  # per-device L: one copy on each device; global G: one in all
    gpu0.release()
    assert granted == ["l0", "l1", "g0", "g1"]


def test_explicit_counts_and_tritons_refusals():
    limiter = RateLimiter([parse_resource("R:1"), parse_resource("D:4:1")])
    with pytest.raises(InvalidArgumentError) as e:
        limiter.register(specs("a", [("R", 2, False)]))
    assert str(e.value) == ('Resource count for "R" is limited to 1 which will prevent scheduling of one or more '
                            "model instances, the minimum required count is 2")
    with pytest.raises(InvalidArgumentError, match='"X" is limited to 0 .* minimum required count is 1'):
        limiter.register(specs("x", [("X", 1, False)]))
    with pytest.raises(InvalidArgumentError, match='"D" is limited to 0'):  # D exists on device 1 only
        limiter.register(specs("d", [("D", 1, False)]))
    limiter.register(specs("d1", [("D", 4, False)], kind="KIND_GPU", device=1))
    limiter.register(specs("ok", [("R", 1, False)]))  # the refused ones left nothing behind


def test_a_resource_both_global_and_per_device_is_refused():
    limiter = RateLimiter()
    limiter.register(specs("g", [("G", 1, True)]))
    with pytest.raises(InvalidArgumentError) as e:
        limiter.register(specs("d", [("G", 1, False)]))
    assert str(e.value) == ('Resource "G" is present as both global and device-specific resource in the model '
                            "configuration.")


def test_unregistering_lowers_the_default_counts_and_unblocks():
    limiter = RateLimiter()
    big = limiter.register(specs("big", [("R", 3, False)]))
    small = limiter.register(specs("small", [("R", 1, False)], count=3))
    granted: list[str] = []
    for i, limit in enumerate(small):
        limit.stage(lambda i=i: granted.append(f"s{i}"))  # type: ignore[misc]
    assert len(granted) == 3  # three copies while big is registered
    for limit in small:
        limit.release()
    limiter.unregister(big)
    granted.clear()
    for i, limit in enumerate(small):
        limit.stage(lambda i=i: granted.append(f"s{i}"))  # type: ignore[misc]
    assert len(granted) == 1  # the most anyone asks for is 1 now


def test_unstaging_the_blocking_head_lets_the_others_go():
    limiter = RateLimiter()
    holder = limiter.register(specs("holder", [("R", 1, False)]))[0]
    big = limiter.register(specs("big", [("R", 2, False)]))[0]
    small = limiter.register(specs("small", [("R", 1, False)]))[0]
    granted: list[str] = []
    holder.stage(lambda: granted.append("holder"))
    big.stage(lambda: granted.append("big"))
    small.stage(lambda: granted.append("small"))
    assert granted == ["holder"]
    big.unstage()
    assert granted == ["holder", "small"]
