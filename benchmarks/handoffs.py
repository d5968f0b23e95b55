"""What a hand-off between the event loop and an instance costs on this machine, by mechanism.

Every request that tritium runs on an instance thread crosses twice between threads (the event loop hands
the batch over, the thread hands the result back), and every request to a Python-backend instance crosses
twice between processes.  What a crossing costs decides where execute runs (``scheduler/workers.py``:
inline on the loop below ``--inline-execute-us``) and whether the Python backend polls
(``stub-spin-microseconds``, ``reply-spin-microseconds``).  This prints, as median and p90 in µs:

1. A thread woken through a ``queue.SimpleQueue`` until it runs Python, while the thread that woke it
   sleeps, and while that thread keeps running Python (as a busy event loop does).  The second is the
   wake-up plus the GIL: the woken thread waits for the switch interval (``sys.setswitchinterval``; the
   server sets ``--switch-interval-us``), asks for the GIL, and is woken again when it is dropped.
2. A round trip between two processes over a socketpair (the Python backend's control channel), blocking
   on each side and polling on each side.

    python benchmarks/handoffs.py [--count 2000] [--switch-us 100]
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import statistics
import sys
import threading
import time


def _percentiles(samples_ns: list[int]) -> tuple[float, float]:
    samples = sorted(samples_ns)
    return statistics.median(samples) / 1e3, samples[int(len(samples) * 0.9)] / 1e3


def thread_wake(count: int, busy: bool, gap_s: float = 0.0005) -> tuple[float, float]:
    """Latency from ``put`` on this thread to the woken thread running Python; between puts this thread
    sleeps (``busy=False``) or runs Python for ``gap_s`` (``busy=True``)."""
    handoff: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    latencies: list[int] = []

    def worker() -> None:
        while (sent := handoff.get()) is not None:
            latencies.append(time.perf_counter_ns() - sent)

    thread = threading.Thread(target=worker)
    thread.start()
    clock = time.perf_counter
    for _ in range(count):
        handoff.put(time.perf_counter_ns())
        if busy:
            end = clock() + gap_s
            while clock() < end:
                pass
        else:
            time.sleep(gap_s)
    handoff.put(None)
    thread.join()
    return _percentiles(latencies[count // 10 :])


def process_round_trip(count: int, poll: bool) -> tuple[float, float]:
    """Round trip of 32 bytes to a child process and back; ``poll``: both sides poll non-blocking reads
    (yielding the CPU between polls, as the Python backend's stub and loop do) instead of sleeping."""
    ours, theirs = socket.socketpair()

    def receive(sock: socket.socket) -> bytes:
        if not poll:
            return sock.recv(64)
        while True:
            try:
                return sock.recv(64)
            except BlockingIOError:
                os.sched_yield()

    pid = os.fork()
    if pid == 0:  # the child echoes until the parent closes its end
        ours.close()
        theirs.setblocking(not poll)
        while data := receive(theirs):
            theirs.send(data)
        os._exit(0)
    theirs.close()
    ours.setblocking(not poll)
    latencies = []
    for _ in range(count):
        start = time.perf_counter_ns()
        ours.send(b"x" * 32)
        receive(ours)
        latencies.append(time.perf_counter_ns() - start)
    ours.close()
    os.waitpid(pid, 0)
    return _percentiles(latencies[count // 10 :])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--switch-us", type=float, default=100, help="GIL switch interval, µs (the server's default)")
    args = ap.parse_args()
    sys.setswitchinterval(args.switch_us / 1e6)
    print(f"{'hand-off':<52} {'median us':>10} {'p90 us':>10}")
    rows = [
        ("thread wake, waker sleeping", thread_wake(args.count, busy=False)),
        (f"thread wake + GIL, waker running Python ({args.switch_us:g} us)", thread_wake(args.count, busy=True)),
        ("process round trip, both sides blocking", process_round_trip(args.count, poll=False)),
        ("process round trip, both sides polling", process_round_trip(args.count, poll=True)),
    ]
    for name, (median, p90) in rows:
        print(f"{name:<52} {median:>10.1f} {p90:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
