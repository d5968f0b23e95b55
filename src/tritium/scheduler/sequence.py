"""Triton's sequence batcher: stateful models get every request of a sequence on one slot, in order.

A request names its sequence with the ``sequence_id`` parameter (a non-zero
integer or a non-empty string) and marks its first and last request with
``sequence_start`` / ``sequence_end``.  A starting sequence takes a free slot
(``max(1, max_batch_size)`` per instance, or ``max_candidate_sequences`` with the
``oldest`` strategy) and keeps it until its END request is scheduled or it
stays idle for ``max_sequence_idle_microseconds``; when every slot is taken it
waits in a backlog, oldest first, as Triton does.

Each instance runs one batch at a time, with at most one request per sequence,
so a sequence's requests run in arrival order and each sees the state its
predecessor left:

- ``direct``: the batch is positional: row *k* is slot *k*, so a model that keeps
  state per batch row stays right; empty rows below the highest busy one are
  "null" requests with READY false (their responses are dropped), as in Triton.
- ``oldest``: the heads of the candidate sequences join, oldest first, like the
  dynamic batcher (preferred sizes, queue delay, compatible shapes).

The batcher adds the ``control_input`` tensors (START, END, READY with their
false/true values, CORRID with its data type) and the implicit ``state`` inputs
to each request, keeps each sequence's state outputs and strips them from the
response.  Everything here runs on the event loop; only ``execute`` runs on the
instance workers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tritium._proto import model_config_pb2 as mc
from tritium.config.sequence import Control, SequenceSettings
from tritium.core.errors import InternalError, InvalidArgumentError, TritiumError, UnavailableError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.stats import ExecutionTiming, ModelStats
from tritium.core.types import DataType, Tensor

from .base import InFlightScheduler
from .dynamic import batch_key
from .timer import Timer, Wakeup, precise_timer
from .workers import Done, InstanceWorker

log = logging.getLogger(__name__)

SequenceId = int | str


class _Entry:
    __slots__ = ("request", "future", "start", "end", "requested")

    def __init__(self, request: InferenceRequest, future: asyncio.Future[InferenceResponse], start: bool,
                 end: bool) -> None:
        self.request = request
        self.future = future
        self.start = start
        self.end = end
        #: The outputs the client asked for (the batcher adds the state outputs while it runs).
        self.requested = request.requested_outputs


class _Sequence:
    __slots__ = ("id", "queue", "slot", "state", "idle_timer", "executing")

    def __init__(self, sequence_id: SequenceId) -> None:
        self.id = sequence_id
        self.queue: deque[_Entry] = deque()
        self.slot: _Slot | None = None
        #: Implicit state: state input name -> the last state output (without batch dimension).
        self.state: dict[str, np.ndarray] = {}
        self.idle_timer: asyncio.TimerHandle | None = None
        self.executing = False


class _Slot:
    __slots__ = ("lane", "index", "sequence")

    def __init__(self, lane: _Lane, index: int) -> None:
        self.lane = lane
        self.index = index
        self.sequence: _Sequence | None = None


class _Lane:
    """One instance and its sequence slots; runs one batch at a time."""

    __slots__ = ("worker", "slots", "busy", "wakeup")

    def __init__(self, worker: InstanceWorker, slots: int, timer: Timer,
                 dispatch: Callable[[_Lane], None]) -> None:
        self.worker = worker
        self.slots = [_Slot(self, i) for i in range(slots)]
        self.busy = False
        self.wakeup = Wakeup(timer, dispatch, self)  # the batcher's dispatch of this lane, after a queue delay


class SequenceBatcher(InFlightScheduler):
    def __init__(self, workers: Sequence[InstanceWorker], loop: asyncio.AbstractEventLoop, config: mc.ModelConfig,
                 settings: SequenceSettings, stats: ModelStats | None = None) -> None:
        self._loop = loop
        self._workers = list(workers)
        self._name = config.name
        self._mbs = config.max_batch_size
        self._settings = settings
        timer = precise_timer(loop)
        self._lanes = [_Lane(w, settings.slots_per_instance, timer, self._dispatch) for w in self._workers]
        self._free: deque[_Slot] = deque(s for slot_index in range(settings.slots_per_instance)
                                         for s in (lane.slots[slot_index] for lane in self._lanes))
        #: Sequences that have started and not yet sent END (in a slot or in the backlog).
        self._live: dict[SequenceId, _Sequence] = {}
        #: Sequences waiting for a slot, oldest first.
        self._backlog: deque[_Sequence] = deque()
        self._in_flight = 0
        self._drained: asyncio.Event | None = None
        self._closed = False
        #: Sequence ids given to requests of an iterative-sequence model that name none (as Triton: from 1).
        self._next_id = itertools.count(1)
        self.stats = stats if stats is not None else ModelStats()
        self._state_outputs = {s.output_name: s for s in settings.states}
        lead = (1,) if self._mbs > 0 else ()
        self._lead = lead
        # Control tensors are the same for every request with the same flags: build each once.
        self._flag_tensors: dict[tuple[bool, bool, bool], list[Tensor]] = {}
        for start in (False, True):
            for end in (False, True):
                for ready in (False, True):
                    self._flag_tensors[(start, end, ready)] = self._make_flags(start, end, ready)

    def _make_flags(self, start: bool, end: bool, ready: bool) -> list[Tensor]:
        tensors = []
        values: dict[int, bool] = {Control.CONTROL_SEQUENCE_START: start, Control.CONTROL_SEQUENCE_END: end,
                  Control.CONTROL_SEQUENCE_READY: ready}
        for kind, control in self._settings.controls.items():
            value = control.true if values[kind] else control.false
            data = np.full(self._lead + (1,), value, control.datatype.numpy_dtype)
            data.flags.writeable = False
            tensors.append(Tensor(control.name, control.datatype, data))
        return tensors

    # -- accepting requests ---------------------------------------------------------------------------

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        if self._closed:
            raise UnavailableError("model is being unloaded")
        sequence_id, start, end = self._sequence_of(request)
        sequence = self._live.get(sequence_id)
        if sequence is None:
            if not start:
                raise InvalidArgumentError(
                    f"inference request for sequence {sequence_id} to model '{self._name}' must specify the START "
                    "flag on the first request of the sequence"
                )
            sequence = _Sequence(sequence_id)
            self._live[sequence_id] = sequence
            if self._free:
                self._assign(sequence, self._free.popleft())
            else:
                self._backlog.append(sequence)
        elif start:
            log.warning("sequence %s for model '%s' has a conflict. The previous sequence did not end before this "
                        "sequence start. Previous sequence will be terminated early.", sequence_id, self._name)
        if end:
            del self._live[sequence_id]  # a later request with this id must start a new sequence
        if sequence.idle_timer is not None:
            sequence.idle_timer.cancel()
            sequence.idle_timer = None
        future: asyncio.Future[InferenceResponse] = self._loop.create_future()
        request.queued_ns = time.monotonic_ns()
        sequence.queue.append(_Entry(request, future, start, end))
        self._in_flight += 1
        if sequence.slot is not None:
            self._dispatch(sequence.slot.lane)
        return await future

    def _sequence_of(self, request: InferenceRequest) -> tuple[SequenceId, bool, bool]:
        """The request's sequence id and START / END flags, checked (an iterative-sequence model gives a
        request without an id a sequence of its own)."""
        params = request.parameters
        sequence_id = params.get("sequence_id", 0)
        start = params.get("sequence_start", False)
        end = params.get("sequence_end", False)
        if isinstance(sequence_id, bool) or not isinstance(sequence_id, (int, str)) or (
                isinstance(sequence_id, int) and not 0 <= sequence_id < 2**64):
            raise InvalidArgumentError(
                f"request parameter 'sequence_id' must be an unsigned integer or a string, got {sequence_id!r}")
        for flag_name, flag in (("sequence_start", start), ("sequence_end", end)):
            if not isinstance(flag, bool):
                raise InvalidArgumentError(f"request parameter '{flag_name}' must be a boolean, got {flag!r}")
        if request.batch_size > 1:
            raise InvalidArgumentError(f"inference request to model '{self._name}' must specify batch-size 1 due to "
                                       "requirements of sequence batcher")
        if not sequence_id and self._settings.iterative:  # a sequence of its own (Triton's IterativeSequencer)
            sequence_id = next(self._next_id)
            while sequence_id in self._live:
                sequence_id = next(self._next_id)
            start = True
            request.parameters = {**params, "sequence_id": sequence_id, "sequence_start": True}
        if not sequence_id:
            raise InvalidArgumentError(
                f"inference request to model '{self._name}' must specify a non-zero or non-empty correlation ID")
        corrid = self._settings.corrid
        if corrid is not None and isinstance(sequence_id, str) != (corrid[1] is DataType.BYTES):
            raise InvalidArgumentError(
                f"inference request to model '{self._name}': sequence_id {sequence_id!r} does not fit the "
                f"CONTROL_SEQUENCE_CORRID data type {corrid[1].config_name}"
            )
        return sequence_id, start, end

    # -- slots ----------------------------------------------------------------------------------------

    def _assign(self, sequence: _Sequence, slot: _Slot) -> None:
        slot.sequence = sequence
        sequence.slot = slot

    def _release(self, slot: _Slot) -> None:
        """Free ``slot``: the oldest backlogged sequence takes it, else it joins the free slots."""
        slot.sequence = None
        if self._backlog:
            sequence = self._backlog.popleft()
            self._assign(sequence, slot)
            self._loop.call_soon(self._dispatch, slot.lane)
        else:
            self._free.append(slot)

    def _watch_idle(self, sequence: _Sequence) -> None:
        if sequence.queue or sequence.executing or sequence.slot is None:
            return
        sequence.idle_timer = self._loop.call_later(self._settings.idle_ns / 1e9, self._reap, sequence)

    def _reap(self, sequence: _Sequence) -> None:
        """A sequence idle past ``max_sequence_idle_microseconds``: forget it and free its slot."""
        sequence.idle_timer = None
        if sequence.queue or sequence.executing or sequence.slot is None:
            return
        log.info("sequence %s of model '%s' idle for more than %d us; releasing its slot", sequence.id,
                 self._name, self._settings.idle_ns // 1000)
        if self._live.get(sequence.id) is sequence:
            del self._live[sequence.id]
        slot = sequence.slot
        sequence.slot = None
        sequence.state.clear()
        self._release(slot)

    # -- forming batches ------------------------------------------------------------------------------

    def _dispatch(self, lane: _Lane) -> None:
        if lane.busy or self._closed:
            return
        if self._settings.iterative:
            for slot in lane.slots:
                if slot.sequence is not None:
                    self._drop_cancelled(slot.sequence)
        # slots whose sequence has a request queued
        ready = [slot for slot in lane.slots if slot.sequence is not None and slot.sequence.queue]
        if not ready:
            lane.wakeup.cancel()
            self._maybe_drained()
            return
        settings = self._settings
        now = time.monotonic_ns()
        oldest_ns = min(slot.sequence.queue[0].request.queued_ns for slot in ready)  # type: ignore[union-attr]
        delay_exceeded = not settings.delay_ns or now - oldest_ns >= settings.delay_ns
        if settings.oldest:
            chosen = self._oldest_batch(ready, delay_exceeded)
        else:
            full = len(ready) >= settings.min_slot_utilization * len(lane.slots)
            chosen = ready if (full or delay_exceeded) else None
        if chosen is None:
            # Wait, at most until the oldest has waited the queue delay (microseconds: see timer.py).
            lane.wakeup.at(oldest_ns + settings.delay_ns)
            return
        lane.wakeup.cancel()
        self._run(lane, chosen)

    def _oldest_batch(self, ready: list[_Slot], delay_exceeded: bool) -> list[_Slot] | None:
        """Heads of the candidate sequences, oldest first, while they fit one batch (Triton's ``oldest``)."""
        # (every slot in ``ready`` holds a sequence with a queued request)
        ready.sort(key=lambda s: s.sequence.queue[0].request.queued_ns)  # type: ignore[union-attr]
        limit = max(1, self._mbs)
        chosen: list[_Slot] = []
        key = None
        best = 0
        full = False
        for slot in ready:
            request = slot.sequence.queue[0].request  # type: ignore[union-attr]
            request_key = batch_key(request)
            if chosen and (len(chosen) >= limit or request_key != key):
                full = True
                break
            key = request_key
            chosen.append(slot)
            if len(chosen) in self._settings.preferred:
                best = len(chosen)
        preferred = self._settings.preferred
        if best and not (self._settings.delay_ns and delay_exceeded):
            return chosen[:best]
        if full or len(chosen) >= (max(preferred) if preferred else limit) or delay_exceeded:
            return chosen
        return None

    def _run(self, lane: _Lane, slots: list[_Slot]) -> None:
        entries: list[_Entry] = []
        sequences: list[_Sequence] = []
        rows: list[InferenceRequest] = []
        positional = not self._settings.oldest and self._mbs > 0
        by_index = {slot.index: slot for slot in slots}
        order = range(max(by_index) + 1) if positional else [s.index for s in slots]
        template: InferenceRequest | None = None
        for index in order:
            slot = by_index.get(index)
            if slot is None:
                rows.append(None)  # type: ignore[arg-type]  # a null request, filled in below
                continue
            sequence = slot.sequence
            assert sequence is not None
            entry = sequence.queue.popleft()
            self._prepare(entry, sequence)
            entries.append(entry)
            sequences.append(sequence)
            rows.append(entry.request)
            template = template or entry.request
            sequence.executing = True
            if entry.end:
                sequence.slot = None
                self._release(slot)  # the next sequence may take the slot; it runs after this batch
        assert template is not None
        rows = [row if row is not None else self._null_request(template) for row in rows]
        lane.busy = True
        self._executing += len(entries)
        self._submit(lane, rows, self._make_done(lane, entries, sequences, rows))

    def _submit(self, lane: _Lane, rows: list[InferenceRequest], done: Done) -> None:
        """Run a formed batch on its lane's instance (the rate-limited batcher waits for resources first)."""
        lane.worker.submit(rows, done)

    def _prepare(self, entry: _Entry, sequence: _Sequence) -> None:
        """Add control and state inputs to the request; ask for its state outputs."""
        request = entry.request
        if entry.start:
            sequence.state.clear()
        settings = self._settings
        injected = settings.injected_inputs
        inputs = [t for t in request.inputs if t.name not in injected] if injected else request.inputs
        inputs.extend(self._flag_tensors[(entry.start, entry.end, True)])
        if settings.corrid is not None:
            name, datatype = settings.corrid
            value: Any = sequence.id.encode() if isinstance(sequence.id, str) else sequence.id
            data = np.array(value, dtype=datatype.numpy_dtype) if datatype is not DataType.BYTES else np.array(
                [value], dtype=object)
            inputs.append(Tensor(name, datatype, data.reshape(self._lead + (1,))))
        for state in settings.states:
            value = sequence.state.get(state.input_name)
            if value is None:
                value = state.initial
            inputs.append(Tensor(state.input_name, state.datatype, value.reshape(self._lead + value.shape)))
        request.inputs = inputs
        if settings.states and request.requested_outputs is not None:
            request.requested_outputs = request.requested_outputs + [s.output_name for s in settings.states]

    def _null_request(self, template: InferenceRequest) -> InferenceRequest:
        """A row for an empty slot: zero inputs shaped like ``template``'s, READY false, no state kept."""
        settings = self._settings
        injected = settings.injected_inputs
        inputs = [Tensor(t.name, t.datatype, np.zeros_like(t.data)) for t in template.inputs
                  if t.name not in injected]
        inputs.extend(self._flag_tensors[(False, False, False)])
        if settings.corrid is not None:
            name, datatype = settings.corrid
            data = np.zeros(self._lead + (1,), datatype.numpy_dtype) if datatype is not DataType.BYTES else \
                np.full(self._lead + (1,), b"", dtype=object)
            inputs.append(Tensor(name, datatype, data))
        for state in settings.states:
            initial = state.initial
            inputs.append(Tensor(state.input_name, state.datatype, initial.reshape(self._lead + initial.shape)))
        return InferenceRequest(template.model_name, template.model_version, "", inputs, template.requested_outputs,
                                {}, batch_size=1)

    def _make_done(self, lane: _Lane, entries: list[_Entry], sequences: list[_Sequence],
                   rows: list[InferenceRequest]) -> Done:
        real = {id(e.request): i for i, e in enumerate(entries)}

        def done(batch: Sequence[InferenceRequest], responses: list[InferenceResponse | TritiumError] | None,
                 error: TritiumError | None, timing: ExecutionTiming) -> None:
            self.stats.record_execution([e.request for e in entries], timing, responses is not None)
            again = 0
            for row_index, row in enumerate(rows):
                i = real.get(id(row))
                if i is None:
                    continue
                entry, sequence = entries[i], sequences[i]
                sequence.executing = False
                entry.request.requested_outputs = entry.requested
                if entry.request.rescheduled:
                    entry.request.rescheduled = False
                    if responses is not None and self._again(entry, sequence):
                        again += 1
                        continue
                outcome: InferenceResponse | TritiumError
                if responses is None:
                    outcome = error or UnavailableError("execution failed")
                else:
                    outcome = responses[row_index]
                if isinstance(outcome, InferenceResponse):
                    outcome = self._keep_state(entry, sequence, outcome)
                if not entry.future.done():
                    if isinstance(outcome, TritiumError):
                        entry.future.set_exception(outcome)
                    else:
                        entry.future.set_result(outcome)
                if self._settings.iterative:
                    self._finish_iteration(sequence)
                else:
                    self._watch_idle(sequence)
            self._in_flight -= len(entries) - again
            self._executing -= len(entries)
            lane.busy = False
            self._dispatch(lane)
            self._maybe_drained()

        return done

    def _again(self, entry: _Entry, sequence: _Sequence) -> bool:
        """The model rescheduled ``entry``: queue it again on its sequence, now neither START nor END (as
        Triton), unless its client has gone, which ends it here."""
        if entry.future.done():
            return False
        entry.start = entry.end = False
        params = entry.request.parameters
        params["sequence_start"] = False
        params.pop("sequence_end", None)
        sequence.queue.append(entry)
        return True

    def _drop_cancelled(self, sequence: _Sequence) -> None:
        """Rescheduled requests whose clients have gone are not run again (Triton answers them CANCELLED); a
        sequence left with nothing to do ends."""
        queue = sequence.queue
        dropped = False
        while queue and not queue[0].start and queue[0].future.cancelled():
            entry = queue.popleft()
            self._in_flight -= 1
            self.stats.record_rejected(entry.request, "CANCELED")
            dropped = True
        if dropped and not sequence.executing:
            self._finish_iteration(sequence)

    def _finish_iteration(self, sequence: _Sequence) -> None:
        """A request of an iterative-sequence model was answered: its sequence ends with it (Triton sends the
        sequence an END then), unless more of its requests wait."""
        if sequence.queue:
            return
        if self._live.get(sequence.id) is sequence:
            del self._live[sequence.id]
        slot = sequence.slot
        if slot is not None:
            sequence.slot = None
            sequence.state.clear()
            self._release(slot)

    def _keep_state(self, entry: _Entry, sequence: _Sequence,
                    response: InferenceResponse) -> InferenceResponse | TritiumError:
        """Store the state outputs for the sequence's next request and hide them from the client."""
        states = self._state_outputs
        if not states:
            return response
        outputs = []
        found = 0
        for tensor in response.outputs:
            spec = states.get(tensor.name)
            if spec is None:
                outputs.append(tensor)
                continue
            found += 1
            data = tensor.data[0] if self._mbs > 0 else tensor.data
            sequence.state[spec.input_name] = np.array(data, copy=True)  # the batch buffer is reused
        if found < len(states):
            missing = [n for n in states if n not in {t.name for t in response.outputs}]
            return InternalError(f"model '{self._name}' did not return its state output(s) {missing}")
        response.outputs = outputs
        return response

    # -- draining -------------------------------------------------------------------------------------

    def close(self) -> None:
        self._closed = True
        for lane in self._lanes:
            lane.wakeup.cancel()
        for sequence in {*self._live.values(), *(s.sequence for lane in self._lanes for s in lane.slots
                                                   if s.sequence is not None)}:
            if sequence.idle_timer is not None:
                sequence.idle_timer.cancel()
        for worker in self._workers:
            worker.stop()
