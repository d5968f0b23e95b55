"""Python backend: what a message of the execute path costs to pickle and unpickle, by its wire form.

The same ``messages.Execute`` (one request, one input) as plain tuples with int kinds (what goes on the wire),
as the NamedTuples themselves, and as plain tuples whose kind is an ``IntEnum`` member: CPU µs per
``pickle.dumps`` + ``pickle.loads``, median of alternating rounds, and the pickled size.

    python benchmarks/ipc_messages.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import enum
import os
import pickle
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from tritium.backends.python.messages import Execute, ExecuteRequest, Kind, Location, TensorMeta  # noqa: E402


class EnumKind(enum.IntEnum):
    EXECUTE = Kind.EXECUTE


def build(kind: Any, named: bool) -> Any:
    meta = ("INPUT0", "FP32", (1, 16), 0, 64, Location.IN_ARENA, -1)
    request = (0, "", 0, 0, {}, ["OUTPUT0"], [TensorMeta(*meta) if named else meta])
    message = (kind, 0, None, 64, None, [ExecuteRequest(*request) if named else request])
    return Execute(*message) if named else message


def cost(message: Any, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        pickle.loads(pickle.dumps(message, 5))
    return (time.process_time() - start) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    forms = {"plain tuples, int kind": build(Kind.EXECUTE, False), "NamedTuples": build(Kind.EXECUTE, True),
             "plain tuples, IntEnum kind": build(EnumKind.EXECUTE, False)}
    times: dict[str, list[float]] = {name: [] for name in forms}
    for round_index in range(args.rounds):
        names = list(forms) if round_index % 2 == 0 else list(reversed(forms))
        for name in names:
            times[name].append(cost(forms[name], args.n))
    base = statistics.median(times["plain tuples, int kind"])
    print(f"{'wire form':<28} {'bytes':>6} {'CPU us':>8} {'x plain':>8}")
    for name, message in forms.items():
        median = statistics.median(times[name])
        print(f"{name:<28} {len(pickle.dumps(message, 5)):>6} {median:>8.2f} {median / base:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
