"""The Program DSL: a program is a named list of steps plus budgets.

Models are strict (`extra="forbid"`, frozen): a typo is an error naming the step and the field, and
a loaded program cannot change under a running VM. Structural checks that need the whole program
(duplicate ids, jump targets, references, conditions) run at load time in `kernel.compiler`; the
static analysis that may only warn (reachability, cycles under a budget, tool availability) is
`kernel.validator`.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from kernel.canonical import canonical_json, sha256_hex
from kernel.compiler import CompiledProgram, ProgramProblems, compile_program
from kernel.errors import ProgramError
from kernel.statuses import OnError, OnSuspendTimeout, OnTimeout, StepType

# Which optional fields each step type accepts; the rest are shared by every type.
_TYPE_FIELDS: dict[StepType, frozenset[str]] = {
    StepType.TOOL: frozenset(
        {
            "tool",
            "args",
            "output_key",
            "timeout_seconds",
            "on_timeout",
            "suspend_timeout_seconds",
            "on_suspend_timeout",
        }
    ),
    StepType.LLM: frozenset(
        {
            "prompt",
            "system",
            "allowed_outputs",
            "output_schema",
            "model",
            "temperature",
            "options",
            "output_key",
            "timeout_seconds",
            "on_timeout",
        }
    ),
    StepType.CONDITION: frozenset({"condition", "then", "otherwise"}),
    StepType.PARALLEL: frozenset({"parallel_steps", "max_concurrency"}),
    StepType.WAIT: frozenset({"seconds", "until"}),
}
_REQUIRED_FIELD = {
    StepType.TOOL: "tool",
    StepType.LLM: "prompt",
    StepType.CONDITION: "condition",
    StepType.PARALLEL: "parallel_steps",
}
_TYPED_FIELDS = frozenset().union(*_TYPE_FIELDS.values())
# The typed fields a step of each type must not set.
_FOREIGN_FIELDS = {t: _TYPED_FIELDS - fields for t, fields in _TYPE_FIELDS.items()}


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _reject_unknown_keys(data: Any, known: frozenset[str], where: str) -> None:
    if not isinstance(data, dict) or known.issuperset(data):
        return
    for key in data:
        if key not in known:
            names = sorted(known)
            raise ValueError(
                f"{where}: unknown field '{key}'{_did_you_mean(str(key), names)}; "
                f"allowed fields are {', '.join(names)}"
            )


class Backoff(BaseModel):
    """Delay before retry attempt n (n >= 1): min(base_seconds * factor**(n-1), max_seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_seconds: float = Field(1.0, ge=0)
    factor: float = Field(2.0, ge=1)
    max_seconds: float = Field(30.0, ge=0)

    def delay(self, retry_number: int) -> float:
        return float(min(self.base_seconds * self.factor ** (retry_number - 1), self.max_seconds))


_DEFAULT_BACKOFF = Backoff()


class Step(BaseModel):
    """One step. Which fields apply depends on `type`; see the README's DSL table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    type: StepType
    description: str | None = None

    # tool
    tool: str | None = None
    args: dict[str, Any] | None = None
    # llm
    prompt: str | None = None
    system: str | None = None
    allowed_outputs: list[str] | None = None
    output_schema: str | dict[str, Any] | None = None
    model: str | None = None
    temperature: float | None = None
    options: dict[str, Any] | None = None
    # tool and llm
    output_key: str | None = None
    timeout_seconds: float | None = Field(None, gt=0)
    on_timeout: OnTimeout = OnTimeout.FAIL
    # tool: how long a suspension may wait for its event, and what happens then
    suspend_timeout_seconds: float | None = Field(None, gt=0)
    on_suspend_timeout: OnSuspendTimeout = OnSuspendTimeout.FAIL
    # wait: a durable timer, `seconds` from now or `until` an ISO 8601 time with a UTC offset
    seconds: float | None = Field(None, gt=0)
    until: datetime | None = None
    # condition
    condition: str | None = None
    then: str | None = None
    otherwise: str | None = None
    # parallel
    parallel_steps: list[Step] | None = None
    max_concurrency: int | None = Field(None, ge=1)
    depends_on: list[str] | None = None

    # errors and control flow
    on_error: OnError | None = None
    max_retries: int = Field(3, ge=1, description="total attempts when on_error is retry")
    # One shared default: Backoff is frozen (hashable), so pydantic neither copies it nor builds
    # a new one per step.
    backoff: Backoff = _DEFAULT_BACKOFF
    is_terminal: bool = False
    next_step: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and not _STEP_FIELDS.issuperset(data):
            _reject_unknown_keys(data, _STEP_FIELDS, f"step '{data.get('id', '?')}'")
        return data

    def model_post_init(self, context: Any, /) -> None:
        # The cross-field checks run here, not in an after-validator: pydantic 2.14 calls a
        # recursive model's model validators twice when it is nested in another model
        # (a Step inside Program.steps), and once here. A ValueError still becomes a
        # ValidationError located at the step.
        step_type = self.type
        fields_set = self.__pydantic_fields_set__
        if not _FOREIGN_FIELDS[step_type].isdisjoint(fields_set):
            self._reject_foreign_fields(step_type, fields_set)
        if step_type is StepType.WAIT:
            if (self.seconds is None) == (self.until is None):
                raise ValueError(f"step '{self.id}': a wait step needs 'seconds' or 'until'")
            if self.until is not None and self.until.tzinfo is None:
                raise ValueError(
                    f"step '{self.id}', field 'until': give a UTC offset (e.g. ...Z or +02:00)"
                )
        elif getattr(self, _REQUIRED_FIELD[step_type]) is None:
            raise ValueError(
                f"step '{self.id}': a {step_type.value} step needs '{_REQUIRED_FIELD[step_type]}'"
            )
        if self.allowed_outputs is not None and not self.allowed_outputs:
            raise ValueError(f"step '{self.id}': 'allowed_outputs' must not be empty")
        if self.parallel_steps is not None and not self.parallel_steps:
            raise ValueError(f"step '{self.id}': 'parallel_steps' must not be empty")

    def _reject_foreign_fields(self, step_type: StepType, fields_set: set[str]) -> None:
        for name in sorted(fields_set & _FOREIGN_FIELDS[step_type]):
            owners = sorted(t.value for t, fields in _TYPE_FIELDS.items() if name in fields)
            raise ValueError(
                f"step '{self.id}': field '{name}' is not valid on a {step_type.value} step "
                f"(only on {' or '.join(owners)} steps)"
            )

    @property
    def effective_on_error(self) -> OnError:
        return self.on_error if self.on_error is not None else OnError.FAIL


class Program(BaseModel):
    """A named list of steps with optional budgets. Load with `from_dict/from_json/from_yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str | None = None
    steps: list[Step] = Field(min_length=1)
    max_steps: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_stalled_steps: int | None = Field(None, ge=1)
    max_duration_seconds: float | None = Field(None, gt=0)
    max_cost_usd: float | None = Field(None, gt=0)

    _compiled: CompiledProgram | None = PrivateAttr(default=None)
    _hash: str | None = PrivateAttr(default=None)
    _data: dict[str, Any] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        _reject_unknown_keys(data, _PROGRAM_FIELDS, "program")
        if isinstance(data, dict) and type(steps := data.get("steps")) is list:
            # Plain steps are built here (pydantic keeps a Step instance as it is); the rest,
            # including every step with a problem, is left to pydantic to validate and report.
            data = {**data, "steps": [_plain_step(step) or step for step in steps]}
        return data

    @model_validator(mode="after")
    def _compile(self) -> Program:
        self._compiled = compile_program(self)
        return self

    def all_steps(self) -> Iterator[Step]:
        """Every step: each top-level step, followed by its parallel children."""
        for step in self.steps:
            yield step
            yield from step.parallel_steps or ()

    def _private(self) -> dict[str, Any]:
        # Read the private values from pydantic's dict: `self._x` goes through
        # BaseModel.__getattr__, which was ~15% of an in-memory run (compiled/hash per step).
        private = self.__pydantic_private__
        assert private is not None
        return private

    @property
    def compiled(self) -> CompiledProgram:
        compiled: CompiledProgram | None = self._private()["_compiled"]
        assert compiled is not None
        return compiled

    @property
    def data(self) -> dict[str, Any]:
        """The program as data, without fields left at their defaults (what `hash` covers).

        Computed once and shared: treat it as read-only (`to_dict()` returns a private copy).
        """
        private = self._private()
        data: dict[str, Any] | None = private["_data"]
        if data is None:
            data = private["_data"] = self.model_dump(mode="json", exclude_defaults=True)
        return data

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)

    @property
    def hash(self) -> str:
        """SHA-256 (hex) of the RFC 8785 canonical JSON of `to_dict()`.

        Fields at their default value are left out, so a later release that adds an optional
        field does not change the hash of existing programs (suspended runs stay resumable).
        """
        private = self._private()
        digest: str | None = private["_hash"]
        if digest is None:
            digest = private["_hash"] = sha256_hex(canonical_json(self.data))
        return digest

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Program:
        """Load a program; every problem is reported in one ProgramError naming step and field."""
        if not isinstance(data, dict):
            raise ProgramError(f"a program must be a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems: list[str] = []
            for err in exc.errors():
                cause = err.get("ctx", {}).get("error")
                if isinstance(cause, ProgramProblems):
                    problems.extend(cause.problems)
                else:
                    problems.append(_describe(err, data))
            raise ProgramError(
                "invalid program: " + "; ".join(problems), problems=problems
            ) from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Program:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProgramError(f"program is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_yaml(cls, text: str) -> Program:
        from kernel.yaml_loader import load_yaml

        return cls.from_dict(load_yaml(text))

    @classmethod
    def from_file(cls, path: str | Path) -> Program:
        """Load a .json, .yaml or .yml file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProgramError(f"cannot read program file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ProgramError(f"program file {path} is not UTF-8 text: {exc.reason}") from None
        if path.suffix.lower() in (".yaml", ".yml"):
            return cls.from_yaml(text)
        if path.suffix.lower() == ".json":
            return cls.from_json(text)
        raise ProgramError(f"program file {path} must end in .json, .yaml or .yml")


_STEP_FIELDS = frozenset(Step.model_fields)
_PROGRAM_FIELDS = frozenset(Program.model_fields)

# -- the plain-step fast path ------------------------------------------------------------------
# Nearly every step of a real program is a few strings (id, type, tool or prompt, output_key,
# next_step...) and maybe literal args. Validating those through pydantic's full Step schema
# (36 fields) was over half of Program.from_dict. A step whose fields all fall in this narrow
# domain, with exactly the types pydantic would keep unchanged and every Step check passing, is
# built directly; anything else returns None and takes the validator. tests/kernel/
# test_plain_steps.py checks, over generated steps, that both paths build equal steps (same
# fields, same fields-set, same dump and so the same program hash).
_PLAIN_STR_FIELDS = frozenset(
    {
        "id",
        "description",
        "tool",
        "prompt",
        "system",
        "model",
        "output_key",
        "condition",
        "then",
        "otherwise",
        "next_step",
    }
)
_PLAIN_FIELDS = _PLAIN_STR_FIELDS | {"type", "args", "is_terminal"}
_PLAIN_TYPES = {t.value: t for t in (StepType.TOOL, StepType.LLM, StepType.CONDITION)}
_STEP_DEFAULTS = {
    name: info.get_default(call_default_factory=True) for name, info in Step.model_fields.items()
}


def _plain_step(data: Any) -> Step | None:
    if type(data) is not dict:
        return None
    kind = data.get("type")
    if type(kind) is not str:
        return None
    # A program's steps come in a few shapes (type and key order): each is checked once.
    shape_key = (kind, *data)
    shape = _SHAPES.get(shape_key)
    if shape is None:
        shape = _plain_shape(kind, data)
        if len(_SHAPES) < _MAX_SHAPES:
            _SHAPES[shape_key] = shape
    if shape is _NOT_PLAIN:
        return None
    step_type, str_keys, has_args, has_flag = shape
    for key in str_keys:
        if type(data[key]) is not str:
            return None
    if not data["id"]:
        return None
    values = _STEP_DEFAULTS.copy()  # keeps the fields' declared order, as pydantic does
    values.update(data)
    values["type"] = step_type
    if has_args:
        args = data["args"]
        if type(args) is not dict or any(type(name) is not str for name in args):
            return None
        values["args"] = dict(args)  # pydantic's dict[str, Any] is a new dict of the same values
    if has_flag and type(data["is_terminal"]) is not bool:
        return None
    step = _new_step(Step)
    _set(step, "__dict__", values)
    _set(step, "__pydantic_fields_set__", set(data))
    _set(step, "__pydantic_extra__", None)
    _set(step, "__pydantic_private__", None)
    return step


_PlainShape = tuple[StepType, tuple[str, ...], bool, bool]
# "Not plain": compared by identity (no plain step is a parallel one).
_NOT_PLAIN: _PlainShape = (StepType.PARALLEL, (), False, False)
_SHAPES: dict[tuple[str, ...], _PlainShape] = {}
_MAX_SHAPES = 1024  # a bound for programs generated with ever new key orders
_new_step = Step.__new__
_set = object.__setattr__


def _plain_shape(kind: str, data: dict[str, Any]) -> _PlainShape:
    """What a step of this type and these keys needs checked per value, or _NOT_PLAIN."""
    step_type = _PLAIN_TYPES.get(kind)
    if step_type is None or not _PLAIN_FIELDS.issuperset(data) or "id" not in data:
        return _NOT_PLAIN
    if not _FOREIGN_FIELDS[step_type].isdisjoint(data) or _REQUIRED_FIELD[step_type] not in data:
        return _NOT_PLAIN  # (the required field, when present, is a string: checked per step)
    str_keys = tuple(key for key in data if key in _PLAIN_STR_FIELDS)
    return step_type, str_keys, "args" in data, "is_terminal" in data


def _describe(err: Any, data: dict[str, Any]) -> str:
    """Turn a pydantic error into 'step 'x', field 'y': message' using the step ids in `data`."""
    loc: tuple[Any, ...] = tuple(err.get("loc", ()))
    message = str(err.get("msg", "invalid"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    where: list[str] = []
    node: Any = data
    i = 0
    while i < len(loc):
        part = loc[i]
        if part in ("steps", "parallel_steps") and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            index = loc[i + 1]
            items = node.get(part) if isinstance(node, dict) else None
            node = items[index] if isinstance(items, list) and index < len(items) else None
            step_id = node.get("id") if isinstance(node, dict) else None
            where.append(f"step '{step_id}'" if step_id else f"{part}[{index}]")
            i += 2
            continue
        if part in StepType.__members__.values() or isinstance(part, int):
            i += 1
            continue
        rest = ".".join(str(p) for p in loc[i:])
        where.append(f"field '{rest}'")
        break
    if message.startswith(("step '", "program:")) or not where:
        return message
    return f"{', '.join(where)}: {message}"
