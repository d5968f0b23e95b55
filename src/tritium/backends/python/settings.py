"""``--backend-config=python,<key>=<value>``: what the Python backend honours, checked once at start."""

from __future__ import annotations

from collections.abc import Mapping

from tritium.core import shm_regions

from ..parameters import whole_number

_MIB = 1 << 20

#: How long a stub polls for its next execute before it sleeps (``stub-spin-microseconds``): waking a
#: sleeping process costs tens of µs on a VM (ARCHITECTURE.md, decisions).  The stub polls only while
#: executes come crowded (several requests each, soon after its last reply: ``stub.WaitPolicy``), yielding
#: the CPU on every poll; with one request in flight it sleeps as soon as it has replied.
DEFAULT_STUB_SPIN_US = 1000
#: While it polls for its next execute, after the first 10 µs, a stub naps this long between polls
#: (``stub-nap-microseconds``; 0: polls back to back all along): a timer wakes it, so the server's send finds
#: nobody to wake, and a nap costs about a quarter of the CPU of polling through it (ARCHITECTURE.md, decisions).
DEFAULT_STUB_NAP_US = 20
#: How long the server's event loop polls for a stub's reply while it has nothing else to do
#: (``reply-spin-microseconds``): the same reason from the other side (ARCHITECTURE.md, decisions).
DEFAULT_REPLY_SPIN_US = 500


class Settings:
    """``--backend-config=python,<key>=<value>`` values this backend honours."""

    def __init__(self, config: Mapping[str, str]) -> None:
        def whole(key: str, default: int, unit: str, minimum: int = 1) -> int:
            return whole_number("python backend", config, key, default, unit, minimum)

        self.stub_spin_us = whole("stub-spin-microseconds", DEFAULT_STUB_SPIN_US, "microseconds", minimum=0)
        self.stub_nap_us = whole("stub-nap-microseconds", DEFAULT_STUB_NAP_US, "microseconds", minimum=0)
        self.reply_spin_s = whole("reply-spin-microseconds", DEFAULT_REPLY_SPIN_US, "microseconds", minimum=0) / 1e6
        self.shm_default = whole("shm-default-byte-size", _MIB, "bytes")
        self.shm_growth = whole("shm-growth-byte-size", _MIB, "bytes")
        self.stub_timeout = float(whole("stub-timeout-seconds", 30, "seconds"))
        self.shm_prefix = config.get("shm-region-prefix-name", "").replace("/", "_") or "tritium_python_"
        # clients may see the arenas' names in /dev/shm: they must not register them as their regions
        shm_regions.reserve_prefix(self.shm_prefix)
