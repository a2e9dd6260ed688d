"""The live state of one run: variables, step outputs, the hash chain and the stall counter.

State is a fold over the trace: a run restored from its trace (for resume or recovery) has the
same variables, outputs and hash as the run that wrote it.
"""

from __future__ import annotations

from typing import Any

from kernel.canonical import is_plain, to_json_value
from kernel.compiler import WEBHOOK_VARIABLE, BoundRef, CompiledProgram
from kernel.errors import VMError
from kernel.hashing import chain, initial_hash, record_bytes
from kernel.statuses import StepStatus
from kernel.trace import StepRecord, Trace

_OUTPUT_STATUSES = frozenset({StepStatus.SUCCESS, StepStatus.SKIPPED, StepStatus.RESUMED})


class MissingValueError(VMError):
    """A reference names a value that does not exist (yet) on this run's path."""


def json_output(value: Any) -> Any:
    """What a step's output becomes in the state and the trace: JSON data (documented forms in
    kernel.canonical), so the next step sees exactly what a replay or a resume would see."""
    if is_plain(value):
        return value
    return to_json_value(value, exact_integers=True)


class RunState:
    __slots__ = (
        "_last_record",
        "compiled",
        "executions",
        "hash",
        "outputs",
        "recorded_children",
        "stalled",
        "trace",
        "track_stalls",
        "variables",
    )

    def __init__(
        self, compiled: CompiledProgram, trace: Trace, *, track_stalls: bool = False
    ) -> None:
        self.compiled = compiled
        self.trace = trace
        self.variables: dict[str, Any] = dict(trace.context)
        self.outputs: dict[str, Any] = {}
        self.hash = bytes.fromhex(trace.initial_hash) if trace.initial_hash else b""
        self.stalled = 0
        self.executions: dict[str, int] = {}  # step id -> how many times it has run
        # Children of an interrupted parallel block already recorded before a crash (recovery).
        self.recorded_children: dict[str, StepRecord] = {}
        self.track_stalls = track_stalls
        self._last_record: dict[str, bytes] = {}

    @classmethod
    def start(
        cls, compiled: CompiledProgram, trace: Trace, *, track_stalls: bool = False
    ) -> RunState:
        trace.initial_hash = initial_hash(trace.program_hash, trace.context).hex()
        return cls(compiled, trace, track_stalls=track_stalls)

    @classmethod
    def restore(
        cls, compiled: CompiledProgram, trace: Trace, *, track_stalls: bool = False
    ) -> RunState:
        """Rebuild the state of a run from its trace (outputs, variables, hash, stall count)."""
        state = cls(compiled, trace, track_stalls=track_stalls)
        for record in trace.steps:
            state._apply(record)
            state._chain(record)
        if trace.state_hashes and state.hash.hex() != trace.state_hashes[-1]:
            raise VMError(f"trace {trace.trace_id}: recorded state hashes do not match its steps")
        return state

    def lookup(self, bound: BoundRef) -> Any:
        if bound.step is not None:
            if bound.step not in self.outputs:
                raise MissingValueError(
                    f"step '{bound.reader}': '{bound.ref.text}' - step '{bound.step}' has not "
                    "run on this path"
                )
            value = self.outputs[bound.step]
        elif bound.name in self.variables:
            value = self.variables[bound.name]
        else:
            raise MissingValueError(self._missing_variable(bound))
        for segment in bound.path:
            value = _descend(value, segment, bound)
        return value

    def _missing_variable(self, bound: BoundRef) -> str:
        setter = self.compiled.output_keys.get(bound.name)
        if setter is not None:
            return (
                f"step '{bound.reader}': '{bound.ref.text}' is set by step '{setter}', which has "
                "not run on this path"
            )
        if bound.name == WEBHOOK_VARIABLE:
            return f"step '{bound.reader}': '{bound.ref.text}' - no webhook event was received"
        return f"step '{bound.reader}': context key '{bound.name}' is missing ('{bound.ref.text}')"

    def publish(self, record: StepRecord) -> None:
        """Make a record's output readable before it is recorded (parallel siblings)."""
        self._apply(record)

    def record(self, record: StepRecord) -> str:
        """Append `record` to the trace, update outputs and the hash chain; return the hash."""
        self.trace.steps.append(record)
        self._apply(record)
        digest = self._chain(record).hex()
        self.trace.state_hashes.append(digest)
        return digest

    def _apply(self, record: StepRecord) -> None:
        if record.status in _OUTPUT_STATUSES:
            self.outputs[record.step_id] = record.output
            node = self.compiled.steps.get(record.step_id)
            if node is not None and node.step.output_key is not None:
                self.variables[node.step.output_key] = record.output
            if record.status is StepStatus.RESUMED:
                self.variables[WEBHOOK_VARIABLE] = record.output

    def _chain(self, record: StepRecord) -> bytes:
        if record.status is not StepStatus.RESUMED:
            self.executions[record.step_id] = self.executions.get(record.step_id, 0) + 1
        data = record_bytes(record.step_id, record.status, record.output, record.error)
        if self.track_stalls:
            # A step that left exactly the same record as its previous run changed nothing.
            if self._last_record.get(record.step_id) == data:
                self.stalled += 1
            else:
                self.stalled = 0
            self._last_record[record.step_id] = data
        self.hash = chain(self.hash, data)
        return self.hash


def _descend(value: Any, segment: str | int, bound: BoundRef) -> Any:
    if isinstance(value, dict):
        key = segment if isinstance(segment, str) else str(segment)
        if key in value:
            return value[key]
        raise MissingValueError(
            f"step '{bound.reader}': '{bound.ref.text}' - no key '{key}' in the value "
            f"(keys: {', '.join(sorted(map(str, value))) or 'none'})"
        )
    if isinstance(value, list) and isinstance(segment, int):
        if segment < len(value):
            return value[segment]
        raise MissingValueError(
            f"step '{bound.reader}': '{bound.ref.text}' - index {segment} is out of range "
            f"(length {len(value)})"
        )
    raise MissingValueError(
        f"step '{bound.reader}': '{bound.ref.text}' - cannot read '{segment}' from a "
        f"{type(value).__name__}"
    )
