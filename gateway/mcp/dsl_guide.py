"""The `write_program` prompt: the Program DSL as a model needs it to write valid programs."""

DSL_GUIDE = """\
# Writing a ledgerflow program

A program is a JSON object: `name`, `steps` (a non-empty array), optional `description` and
budgets `max_steps`, `max_tokens`, `max_cost_usd`, `max_duration_seconds`, `max_stalled_steps`.
Every object is strict: an unknown field, or a field of another step type, is an error naming
the step and the field. A program whose steps can loop must set `max_steps`.

## Steps
Every step has `id` (letters, digits, `_`; not starting with a digit) and `type`. Optional on
every step: `description` (a note for readers), `on_error` (`fail` default, `skip`: output null,
`retry`), `max_retries` (total attempts, default 3), `backoff` (`base_seconds`, `factor`,
`max_seconds`, default 1, 2, 30: retry n waits min(base_seconds * factor**(n-1), max_seconds));
on top-level steps `is_terminal` (the run ends SUCCESS after it) and `next_step` (jump to that
step after it).

- `tool`: `tool` (a registered tool name), `args` (keyword arguments, interpolated; without
  `args` the tool gets the context values its signature names), `output_key` (also store the
  output under this variable), `timeout_seconds` + `on_timeout` (`fail`|`fallback`),
  `suspend_timeout_seconds` + `on_suspend_timeout` (`fail`|`continue`). A tool that returns
  "PENDING" suspends the run: resume_run's event becomes the step's output.
- `llm`: `prompt` (required), `system`, `allowed_outputs` (the stripped reply must be one of
  these), `output_schema` (a JSON Schema, or "json", "int", "float", "bool": the output is the
  parsed value), `model`, `temperature`, `options`, `output_key`, `timeout_seconds`,
  `on_timeout`.
- `condition`: `condition` (an expression), `then`, `otherwise` (step ids; a missing one means
  the next step in the array). A condition that cannot be evaluated fails the run.
- `parallel`: `parallel_steps` (tool or llm children), `max_concurrency`; a child may set
  `depends_on` (sibling ids) and may read only siblings it depends on. The block's output is
  {child_id: output}; it fails if a child fails.
- `wait`: `seconds` or `until` (ISO 8601 with an offset): a durable timer.

## Control flow
Steps run in array order. A step named by a condition's `then`/`otherwise` is a branch target:
the run ends SUCCESS after it unless it has `next_step`. So after a guard, give the branch it
jumps to a `next_step` to rejoin the main path, and end other branches with `is_terminal`.

## Values
`$key` is a context value; `$step_id` or `$step_id.output` a step's output; `$step_id.output.a.0.b`
a path into it; `$out_key` a value stored by `output_key`. A string that is exactly one reference
keeps the value's type; inside text write `${step_id.output.x}` (rendered as text, non-strings as
JSON); `$$` is a literal `$`. Interpolation applies to `args`, `prompt` and `system`. A context
key may not equal a step id or an output_key. After a resume, `$__webhook__` is the event.

## Condition expressions
Precedence, lowest first: `or`, `and`, `not`, comparisons; parentheses group. Comparisons:
`==`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`, `contains` (`a contains b` is `b in a`).
Literals: 'single' or "double" quoted strings, integers, floats, true, false, null; references
`$a.b.c`. A lone operand tests truthiness (`$approved`, `not $errors`). Types are strict:
comparing a string with a number is an error, never false. No arithmetic, no calls.

## Example
{"name": "payment_flow", "max_steps": 20, "steps": [
  {"id": "reserve", "type": "tool", "tool": "reserve_funds",
   "args": {"order_id": "$order_id", "amount": "$amount"}},
  {"id": "amount_guard", "type": "condition", "condition": "$amount <= 1000",
   "then": "initiate", "otherwise": "review"},
  {"id": "initiate", "type": "tool", "tool": "initiate_payment",
   "args": {"order_id": "$order_id", "amount": "$amount"}, "next_step": "capture"},
  {"id": "capture", "type": "tool", "tool": "capture_payment",
   "args": {"order_id": "$order_id", "status": "$initiate.output.status"}},
  {"id": "receipt", "type": "tool", "tool": "send_receipt",
   "args": {"order_id": "$order_id"}, "is_terminal": true},
  {"id": "review", "type": "tool", "tool": "flag_for_review",
   "args": {"order_id": "$order_id"}, "is_terminal": true}]}

Check a program with validate_program before run_program; save versions with save_program.
"""


# --- the server -------------------------------------------------------------------------------
