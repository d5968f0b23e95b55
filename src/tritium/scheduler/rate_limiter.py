"""Triton's rate limiter (``--rate-limit=execution_count``): which model instance may execute next, across models.

An instance lists the resources it needs while it executes (``instance_group { rate_limiter { resources
[{name, count, global}] priority } }``).  Resources are per device (the instance's GPU; CPU instances count
as device 0, as in Triton) unless ``global``.  How many copies exist: ``--rate-limit-resource
<name>:<count>[:<device>]`` when any is given (a resource not named there has none), else the largest count
any registered instance asks for.  Instances that share a resource therefore never execute together beyond
its count.

As Triton's ``RateLimiter``: a scheduler with work *stages* one of its free instances; staged instances wait
in one heap across all models, ordered by ``execution count × max(priority, 1)`` (an instance of priority 2
gets half the turns of one of priority 1), then by arrival; the head is *allocated* its resources as soon as
they are free and only the head (it is never passed by a cheaper instance behind it); an execution's end
releases them.  Registration checks the counts with Triton's messages, so a model that could never run fails
its load instead.

Everything but registration runs on the event loop, without locks; registration runs on a load thread under
a lock of its own and only ever replaces the table of counts whole and adds (never removes) allocation
counters, each one step under the GIL.  With ``--rate-limit=off`` there is no limiter at all (no cost on that
path).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Sequence

from tritium.backends.base import InstanceSpec
from tritium.core.errors import InvalidArgumentError

#: Device keys: resources shared by every device, and ``--rate-limit-resource`` items for every device.
GLOBAL = -2
PER_DEVICE = -1

#: Device -> resource name -> count.
Resources = dict[int, dict[str, int]]


def parse_resource(text: str) -> tuple[str, int, int]:
    """``<name>:<count>[:<device>]`` as ``tritonserver`` reads it: (name, count, device or -1 for every device).

    Raises :class:`ValueError` with Triton's message.
    """
    form = ("--rate-limit-resource option format is '<resource_name>:<count>:<device>' or "
            f"'<resource_name>:<count>'. Got {text}")
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(form)
    numbers = []
    for part in parts[1:]:
        try:
            numbers.append(int(part))
        except ValueError:
            raise ValueError(f"Invalid option value. Got {part}") from None
    count = numbers[0]
    device = numbers[1] if len(numbers) == 2 else PER_DEVICE
    if count < 0:  # Triton turns a negative count into an unsigned one: unlimited by accident
        raise ValueError(f"--rate-limit-resource count must be >= 0. Got {text}")
    if len(numbers) == 2 and device < 0:
        raise ValueError(f"--rate-limit-resource device must be >= 0. Got {text}")
    return parts[0], count, device


class InstanceLimit:
    """One model instance as the limiter sees it: what it needs, its priority, how often it executed."""

    __slots__ = ("name", "needs", "flat", "priority", "executions", "grant", "_limiter")

    def __init__(self, limiter: RateLimiter, name: str, needs: Resources, priority: int) -> None:
        self._limiter = limiter
        self.name = name
        self.needs = needs
        #: ``needs`` as (device, name, count) triples, for the checks on every execution.
        self.flat = [(device, resource, count) for device, names in needs.items() for resource, count in names.items()]
        #: Triton treats 0 (unset) as 1.
        self.priority = max(priority, 1)
        self.executions = 0
        #: Called (on the loop) when the instance is allocated its resources; ``None`` while not staged.
        self.grant: Callable[[], None] | None = None

    @property
    def scaled_priority(self) -> int:
        return self.executions * self.priority

    def stage(self, grant: Callable[[], None]) -> None:
        """Wait for this instance's resources; ``grant`` is called once they are allocated (maybe at once)."""
        self._limiter.stage(self, grant)

    def unstage(self) -> None:
        """Stop waiting (the model is going away)."""
        self._limiter.unstage(self)

    def release(self, executed: bool = True) -> None:
        """The execution ended (or, ``executed`` False, did not happen): free the resources, count the
        execution, let the next instance go."""
        if executed:
            self.executions += 1
        self._limiter.release(self)


class RateLimiter:
    """The server's one limiter (:mod:`module docs <tritium.scheduler.rate_limiter>`)."""

    def __init__(self, explicit: Sequence[tuple[str, int, int]] = ()) -> None:
        #: ``--rate-limit-resource`` items: device (or PER_DEVICE) -> name -> count.
        self._explicit: Resources = {}
        for name, count, device in explicit:
            self._explicit.setdefault(device, {})[name] = count
        self._lock = threading.Lock()
        self._registered: set[InstanceLimit] = set()
        #: What exists and what is allocated now: device (or GLOBAL) -> name -> count; every resource a
        #: registered instance needs has both.
        self._available: Resources = {}
        self._allocated: Resources = {}
        self._staged: list[tuple[int, int, InstanceLimit]] = []
        self._order = itertools.count()
        self._attempting = False
        self._again = False

    # -- registration (load threads) ----------------------------------------------------------------

    def register(self, specs: Sequence[InstanceSpec]) -> list[InstanceLimit]:
        """The limits of a model version's instances (one per spec, in order), checked against every
        registered instance; raises :class:`InvalidArgumentError` with Triton's message when the resources
        could never let one of them execute (nothing is registered then)."""
        limits = [InstanceLimit(self, spec.name, _needs(spec), spec.group.rate_limiter.priority) for spec in specs]
        with self._lock:
            self._registered.update(limits)
            try:
                available = self._compute()
            except InvalidArgumentError:
                self._registered.difference_update(limits)
                raise
            for device, names in available.items():  # counters first: the loop reads both without a lock
                counters = self._allocated.setdefault(device, {})
                for name in names:
                    counters.setdefault(name, 0)
            self._available = available
        return limits

    def unregister(self, limits: Sequence[InstanceLimit]) -> None:
        """The version is gone (its scheduler closed, so none of its instances is staged): its needs no longer
        count towards the default resource counts."""
        with self._lock:
            self._registered.difference_update(limits)
            self._available = self._compute()

    def _compute(self) -> Resources:
        """The copies of each resource, as Triton's ``ResourceManager`` derives and checks them."""
        required: Resources = {}
        for limit in self._registered:
            for device, names in limit.needs.items():
                table = required.setdefault(device, {})
                for name, count in names.items():
                    table[name] = max(table.get(name, 0), count)
        available: Resources = {device: dict(names) for device, names in required.items()}
        if self._explicit:
            for device, names in required.items():
                for name, need in names.items():
                    if device == GLOBAL:  # any device's item for that name counts
                        given = max((items.get(name, 0) for items in self._explicit.values()), default=0)
                    else:
                        given = max(self._explicit.get(device, {}).get(name, 0),
                                    self._explicit.get(PER_DEVICE, {}).get(name, 0))
                    if given < need:
                        raise InvalidArgumentError(
                            f'Resource count for "{name}" is limited to {given} which will prevent scheduling of '
                            f"one or more model instances, the minimum required count is {need}")
                    available[device][name] = given
        for name in required.get(GLOBAL, {}):
            for device, names in required.items():
                if device != GLOBAL and name in names:
                    raise InvalidArgumentError(
                        f'Resource "{name}" is present as both global and device-specific resource in the model '
                        "configuration.")
        return available

    # -- scheduling (event loop) --------------------------------------------------------------------

    def stage(self, limit: InstanceLimit, grant: Callable[[], None]) -> None:
        limit.grant = grant
        heapq.heappush(self._staged, (limit.scaled_priority, next(self._order), limit))
        self._attempt()

    def unstage(self, limit: InstanceLimit) -> None:
        if limit.grant is None:
            return
        limit.grant = None
        self._staged[:] = [entry for entry in self._staged if entry[2] is not limit]
        heapq.heapify(self._staged)
        self._attempt()  # the head may have been the one that blocked the others

    def release(self, limit: InstanceLimit) -> None:
        allocated = self._allocated
        for device, name, count in limit.flat:
            allocated[device][name] -= count
        if self._staged:
            self._attempt()

    def _attempt(self) -> None:
        """Allocate the head of the staged heap while its resources are free; a grant that stages or releases
        at once (an execution that ran inline, a batch whose clients left) comes back here and is handled by
        the loop already running."""
        if self._attempting:
            self._again = True
            return
        self._attempting = True
        staged = self._staged
        try:
            while True:
                self._again = False
                while staged and self._allocate(staged[0][2]):
                    limit = heapq.heappop(staged)[2]
                    grant, limit.grant = limit.grant, None
                    if grant is not None:
                        grant()
                if not self._again:
                    return
        finally:
            self._attempting = False

    def _allocate(self, limit: InstanceLimit) -> bool:
        available = self._available
        allocated = self._allocated
        for device, name, count in limit.flat:
            if allocated[device][name] + count > available[device][name]:
                return False
        for device, name, count in limit.flat:
            allocated[device][name] += count
        return True


def _needs(spec: InstanceSpec) -> Resources:
    """What one instance needs while it executes: device (or GLOBAL) -> name -> count."""
    needs: Resources = {}
    device = spec.device_id if spec.kind == "KIND_GPU" else 0
    for resource in spec.group.rate_limiter.resources:
        needs.setdefault(GLOBAL if getattr(resource, "global") else device, {})[resource.name] = resource.count
    return needs
