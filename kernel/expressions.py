"""Sandboxed condition expressions: parsed once into a small AST, compiled into closures.

Grammar (precedence low -> high)::

    condition  := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := operand [op operand]        op: == != < <= > >= in "not in" contains
    operand    := literal | $reference | "(" condition ")"

An operand alone tests its truthiness. A quoted string that is exactly one reference (`'$x'`) reads
that value with its type; a quoted string embedding references is a template rendered to text.
References are always looked up as values, never spliced into the source, so a value cannot change
the expression. Evaluation is strictly typed: comparing values of different types is an
ExpressionError naming both, never a silent False. Nothing here calls eval/exec, and no Python
name, attribute or builtin is reachable from a condition.
"""

from __future__ import annotations

import math
import operator
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernel.errors import ExpressionError
from kernel.references import Reference, Template, parse_template, render, whole_reference

__all__ = ["Condition", "compile_condition"]

MAX_SOURCE_LENGTH = 10_000
MAX_NESTING = 64  # parentheses and `not` levels together; keeps every recursion far from the limit

Lookup = Callable[[Reference], Any]
_Value = Callable[[Lookup], Any]
_Test = Callable[[Lookup], bool]

# ---------------------------------------------------------------------------------------------
# AST


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Any


@dataclass(frozen=True, slots=True)
class _Read:
    reference: Reference


@dataclass(frozen=True, slots=True)
class _Text:
    template: Template


@dataclass(frozen=True, slots=True)
class _Compare:
    op: str
    left: _Node
    right: _Node


@dataclass(frozen=True, slots=True)
class _Not:
    operand: _Node


@dataclass(frozen=True, slots=True)
class _BoolOp:
    is_and: bool
    operands: tuple[_Node, ...]


_Node = _Literal | _Read | _Text | _Compare | _Not | _BoolOp

# ---------------------------------------------------------------------------------------------
# Tokens

# ASCII only: `\d` and `\w` would accept other scripts' digits and letters.
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RUN = re.compile(r"[A-Za-z0-9_.]*")  # the longest text that could belong to a reference or number
_SPACE = " \t\r\n"
_OPERATORS = ("==", "!=", "<=", ">=", "<", ">")
_KEYWORDS = {"and": "and", "or": "or", "not": "not", "in": "op", "contains": "op"}
_CONSTANTS: dict[str, Any] = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}
_ESCAPES = {"'": "'", '"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
_ARITHMETIC = "arithmetic is not supported"
_HINTS = {
    "=": "use '==' to compare",
    "!": "use 'not' or '!='",
    "&": "use 'and'",
    "|": "use 'or'",
    "+": _ARITHMETIC,
    "-": _ARITHMETIC,
    "*": _ARITHMETIC,
    "/": _ARITHMETIC,
    "%": _ARITHMETIC,
    ".": "attribute access and method calls are not supported",
    "[": "list literals are not supported",
    "{": "dict literals are not supported",
}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "value", "op", "(", ")", "and", "or", "not" or "end"
    text: str  # as written, for messages; the operator for "op"
    column: int  # 1-based
    node: _Node | None = None


def _run_end(text: str, pos: int) -> int:
    match = _RUN.match(text, pos)
    return match.end() if match is not None else pos


def _show(text: str, limit: int = 200) -> str:
    """Source text fit for a message: clipped, with invisible characters escaped."""
    clipped = text if len(text) <= limit else text[:limit] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in clipped)


class _Lexer:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens: list[_Token] = []
        self.references: list[Reference] = []

    def fail(self, message: str, column: int) -> ExpressionError:
        return ExpressionError(f"{message} in condition: {_show(self.source)}", column=column)

    def run(self) -> list[_Token]:
        source, pos = self.source, 0
        while pos < len(source):
            char, column = source[pos], pos + 1
            if char in _SPACE:
                pos += 1
            elif char in "()":
                self.tokens.append(_Token(char, char, column))
                pos += 1
            elif source.startswith(_OPERATORS, pos):
                op = next(o for o in _OPERATORS if source.startswith(o, pos))
                self.tokens.append(_Token("op", op, column))
                pos += len(op)
            elif char in "'\"":
                pos = self.string(pos)
            elif char == "$":
                pos = self.reference(pos)
            elif (number := _NUMBER.match(source, pos)) is not None:
                pos = self.number(pos, number.end())
            elif (word := _WORD.match(source, pos)) is not None:
                pos = self.word(pos, word.group())
            else:
                hint = f" ({_HINTS[char]})" if char in _HINTS else ""
                raise self.fail(f"unexpected character {char!r} at column {column}{hint}", column)
        self.tokens.append(_Token("end", "", len(source) + 1))
        return self.tokens

    def value(self, start: int, end: int, node: _Node) -> int:
        self.tokens.append(_Token("value", self.source[start:end], start + 1, node))
        return end

    def string(self, start: int) -> int:
        source, quote = self.source, self.source[start]
        chars: list[str] = []
        pos = start + 1
        while True:
            if pos >= len(source):
                raise self.fail(f"unterminated string starting at column {start + 1}", start + 1)
            char = source[pos]
            if char == quote:
                break
            if char != "\\":
                chars.append(char)
                pos += 1
                continue
            escape = source[pos + 1 : pos + 2]
            if escape in _ESCAPES:
                chars.append(_ESCAPES[escape])
                pos += 2
            elif escape == "u":
                chars.append(self.unicode_escape(pos))
                pos += 6
            elif escape == "":
                raise self.fail(f"unterminated string starting at column {start + 1}", start + 1)
            else:
                found = "\\" + escape
                raise self.fail(f"unknown escape {found!r} at column {pos + 1}", pos + 1)
        # A quoted reference is read as that value; embedded references make a template.
        parsed = parse_template("".join(chars))
        node: _Node
        if isinstance(parsed, Reference):
            node = _Read(parsed)
            self.references.append(parsed)
        elif isinstance(parsed, Template):
            node = _Text(parsed)
            self.references.extend(parsed.references)
        else:
            node = _Literal(parsed)
        return self.value(start, pos + 1, node)

    def unicode_escape(self, pos: int) -> str:
        digits = self.source[pos + 2 : pos + 6]
        if len(digits) != 4 or not all(d in "0123456789abcdefABCDEF" for d in digits):
            found = self.source[pos : pos + 6]
            message = f"invalid escape {found!r} at column {pos + 1} (expected \\uXXXX)"
            raise self.fail(message, pos + 1)
        code = int(digits, 16)
        if 0xD800 <= code <= 0xDFFF:
            # Lone surrogates are not text; astral characters can be written as they are.
            message = f"surrogate escape '\\u{digits}' at column {pos + 1} is not a character"
            raise self.fail(message, pos + 1)
        return chr(code)

    def reference(self, start: int) -> int:
        source, column = self.source, start + 1
        if source.startswith("${", start):
            close = source.find("}", start)
            if close == -1:
                raise self.fail(f"unterminated '${{' at column {column}", column)
            end = close + 1
        else:
            end = _run_end(source, start + 1)
        text = source[start:end]
        reference = whole_reference(text)
        if reference is None:
            hint = " ('$$' is a literal '$' only inside quotes)" if text == "$" else ""
            raise self.fail(
                f"invalid reference {_show(text, 40)!r} at column {column}{hint}", column
            )
        self.references.append(reference)
        return self.value(start, end, _Read(reference))

    def number(self, start: int, end: int) -> int:
        text, column = self.source[start:end], start + 1
        run_end = _run_end(self.source, end)
        if run_end > end:  # `1abc`, `1.2.3`, `1e`: never split into two tokens
            found = _show(self.source[start:run_end], 40)
            raise self.fail(f"invalid number {found!r} at column {column}", column)
        try:
            value: int | float = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:  # more digits than int() accepts
            raise self.fail(f"number too long at column {column}", column) from None
        if isinstance(value, float) and math.isinf(value):
            raise self.fail(f"number {_show(text, 40)!r} out of range at column {column}", column)
        return self.value(start, end, _Literal(value))

    def word(self, start: int, word: str) -> int:
        end, column = start + len(word), start + 1
        if word in _KEYWORDS:
            self.tokens.append(_Token(_KEYWORDS[word], word, column))
            return end
        if word in _CONSTANTS:
            return self.value(start, end, _Literal(_CONSTANTS[word]))
        if self.source[end:].lstrip(_SPACE).startswith("("):
            message = f"function calls are not supported: {word!r} at column {column}"
            raise self.fail(message, column)
        if word.lower() in _KEYWORDS or word.lower() in _CONSTANTS:
            hint = f"keywords are lowercase: {word.lower()!r}"
        else:
            hint = f"write text in quotes, as '{word}', or read a value as ${word}"
        raise self.fail(f"unexpected bare word {word!r} at column {column} ({hint})", column)


# ---------------------------------------------------------------------------------------------
# Parser


class _Parser:
    def __init__(self, lexer: _Lexer, tokens: list[_Token]) -> None:
        self.lexer = lexer
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    @property
    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def advance(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def unexpected(self, token: _Token, expected: str) -> ExpressionError:
        found = repr(_show(token.text, 40)) if token.kind != "end" else "the end of the condition"
        hint = f" ({_ARITHMETIC})" if token.text.startswith("-") else ""
        message = f"expected {expected} but found {found} at column {token.column}{hint}"
        return self.lexer.fail(message, token.column)

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            message = f"nesting deeper than {MAX_NESTING} levels at column {token.column}"
            raise self.lexer.fail(message, token.column)

    def parse(self) -> _Node:
        if self.peek.kind == "end":
            raise self.lexer.fail("empty condition at column 1", 1)
        node = self.or_expr()
        token = self.peek
        if token.kind == ")":
            raise self.lexer.fail(f"unbalanced ')' at column {token.column}", token.column)
        if token.kind != "end":
            raise self.unexpected(token, "'and', 'or' or the end of the condition")
        return node

    def or_expr(self) -> _Node:
        operands = [self.and_expr()]
        while self.peek.kind == "or":
            self.advance()
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else _BoolOp(False, tuple(operands))

    def and_expr(self) -> _Node:
        operands = [self.not_expr()]
        while self.peek.kind == "and":
            self.advance()
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else _BoolOp(True, tuple(operands))

    def not_expr(self) -> _Node:
        if self.peek.kind != "not":
            return self.comparison()
        self.enter(self.advance())
        node = _Not(self.not_expr())
        self.depth -= 1
        return node

    def comparison(self) -> _Node:
        left = self.operand()
        op = self.operator()
        if op is None:
            return left
        right = self.operand()
        token = self.operator()
        if token is not None:
            message = (
                f"chained comparison: a second operator {token.text!r} at column {token.column}"
                " (join comparisons with 'and')"
            )
            raise self.lexer.fail(message, token.column)
        return _Compare(op.text, left, right)

    def operator(self) -> _Token | None:
        """Consume a comparison operator (`not in` is two tokens) if one comes next."""
        token = self.peek
        if token.kind == "op":
            return self.advance()
        if token.kind == "not" and self.tokens[self.pos + 1].text == "in":
            self.pos += 2
            return _Token("op", "not in", token.column)
        return None

    def operand(self) -> _Node:
        previous = self.tokens[self.pos - 1].text if self.pos > 0 else None
        token = self.advance()
        if token.kind == "value":
            assert token.node is not None
            node = token.node
        elif token.kind == "(":
            self.enter(token)
            node = self.or_expr()
            close = self.peek
            if close.kind == "end":
                message = f"unclosed '(' at column {token.column}"
                raise self.lexer.fail(message, token.column)
            if close.kind != ")":
                raise self.unexpected(close, "')', 'and' or 'or'")
            self.advance()
            self.depth -= 1
        else:
            after = f" after {previous!r}" if previous is not None else ""
            raise self.unexpected(token, "a value" + after)
        if self.peek.kind == "(":
            column = self.peek.column
            message = (
                f"unexpected '(' at column {column} (function and method calls are not supported)"
            )
            raise self.lexer.fail(message, column)
        return node


# ---------------------------------------------------------------------------------------------
# Evaluation: strict types


_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxother = 60
_SHORT.maxlevel = 3

_KINDS: dict[type, str] = {
    type(None): "null",
    bool: "bool",
    int: "number",
    float: "number",
    str: "str",
    list: "list",
    tuple: "list",
    dict: "dict",
}


def _kind(value: Any) -> str:
    """The comparison type: bool is not a number; int and float are both numbers."""
    kind = _KINDS.get(type(value))
    if kind is not None:
        return kind
    for base in (bool, int, float, str, list, tuple, dict):  # subclasses such as StrEnum
        if isinstance(value, base):
            return _KINDS[base]
    return type(value).__name__


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool true" if value else "bool false"
    try:
        shown = _SHORT.repr(value)
    except ValueError:  # an int too long to print
        shown = "(too long to show)"
    return f"{type(value).__name__} {shown}"


def _mismatch(op: str, left: Any, right: Any) -> ExpressionError:
    return ExpressionError(f"cannot compare {_describe(left)} with {_describe(right)} using {op!r}")


def _equal(left: Any, right: Any, op: str | None) -> bool:
    """Strict structural equality; a type mismatch raises for `op`, or is unequal if op is None."""
    if left is None or right is None:
        return left is None and right is None
    kind = _kind(left)
    if kind != _kind(right):
        if op is None:
            return False
        raise _mismatch(op, left, right)
    if kind == "list":
        return len(left) == len(right) and all(
            _equal(a, b, op) for a, b in zip(left, right, strict=True)
        )
    if kind == "dict":
        return left.keys() == right.keys() and all(_equal(left[k], right[k], op) for k in left)
    return bool(left == right)


def _ordered(compare: Callable[[Any, Any], Any]) -> Callable[[str, Any, Any], bool]:
    def test(op: str, left: Any, right: Any) -> bool:
        kind = _kind(left)
        if kind not in ("number", "str") or kind != _kind(right):
            raise _mismatch(op, left, right)
        return bool(compare(left, right))

    return test


def _member(op: str, item: Any, container: Any, left: Any, right: Any) -> bool:
    """`item in container`; `left`/`right` are the operands in source order, for messages."""
    kind = _kind(container)
    if kind == "list":
        return any(_equal(item, element, None) for element in container)
    if kind in ("str", "dict") and _kind(item) == "str":
        return bool(item in container)
    side = "left" if op == "contains" else "right"
    if kind == "str":
        reason = "a str can only contain a str"
    elif kind == "dict":
        reason = "dict keys are strings"
    else:
        reason = f"the {side} side must be a str, list or dict"
    raise ExpressionError(
        f"cannot use {op!r} with {_describe(left)} and {_describe(right)}: {reason}"
    )


_COMPARISONS: dict[str, Callable[[str, Any, Any], bool]] = {
    "==": lambda op, a, b: _equal(a, b, op),
    "!=": lambda op, a, b: not _equal(a, b, op),
    "<": _ordered(operator.lt),
    "<=": _ordered(operator.le),
    ">": _ordered(operator.gt),
    ">=": _ordered(operator.ge),
    "in": lambda op, a, b: _member(op, a, b, a, b),
    "not in": lambda op, a, b: not _member(op, a, b, a, b),
    "contains": lambda op, a, b: _member(op, b, a, a, b),
}

# ---------------------------------------------------------------------------------------------
# Compilation to closures: evaluation does no parsing and no dispatch on operator names.


def _text(value: Any) -> str:
    try:
        return render(value)
    except ValueError:  # an int too long to print
        raise ExpressionError(f"cannot render {type(value).__name__} value as text") from None


def _compile_piece(part: str | Reference) -> Callable[[Lookup], str]:
    if isinstance(part, str):
        return lambda lookup: part
    return lambda lookup: _text(lookup(part))


def _compile_value(node: _Node) -> _Value:
    if isinstance(node, _Literal):
        constant = node.value
        return lambda lookup: constant
    if isinstance(node, _Read):
        reference = node.reference
        return lambda lookup: lookup(reference)
    if isinstance(node, _Text):
        pieces = tuple(_compile_piece(part) for part in node.template.parts)
        return lambda lookup: "".join([piece(lookup) for piece in pieces])
    return _compile_test(node)  # a parenthesised condition used as a value is its bool


def _compile_test(node: _Node) -> _Test:
    if isinstance(node, _Compare):
        compare, op = _COMPARISONS[node.op], node.op
        left, right = _compile_value(node.left), _compile_value(node.right)
        return lambda lookup: compare(op, left(lookup), right(lookup))
    if isinstance(node, _Not):
        inner = _compile_test(node.operand)
        return lambda lookup: not inner(lookup)
    if isinstance(node, _BoolOp):
        tests = tuple(_compile_test(n) for n in node.operands)
        if len(tests) == 2:  # the common case, without a generator
            first, second = tests
            if node.is_and:
                return lambda lookup: first(lookup) and second(lookup)
            return lambda lookup: first(lookup) or second(lookup)
        if node.is_and:
            return lambda lookup: all(test(lookup) for test in tests)
        return lambda lookup: any(test(lookup) for test in tests)
    value = _compile_value(node)
    return lambda lookup: bool(value(lookup))


# ---------------------------------------------------------------------------------------------
# Public surface


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition: immutable, compiled once per program, evaluated many times."""

    source: str
    references: tuple[Reference, ...]  # every reference read, in order of appearance
    _test: _Test = field(repr=False, compare=False)

    def evaluate(self, lookup: Lookup) -> bool:
        """Evaluate with values from `lookup`; its own ExpressionErrors propagate unchanged."""
        try:
            return self._test(lookup)
        except RecursionError:  # a value nested too deeply to compare or render
            raise ExpressionError(
                f"a value is nested too deeply to evaluate condition: {_show(self.source)}"
            ) from None


def compile_condition(source: str) -> Condition:
    """Parse and compile `source`; any syntax problem is an ExpressionError with its column."""
    if len(source) > MAX_SOURCE_LENGTH:
        raise ExpressionError(
            f"condition is {len(source)} characters long; the limit is {MAX_SOURCE_LENGTH}"
            f" (column {MAX_SOURCE_LENGTH + 1}) in condition: {_show(source)}",
            column=MAX_SOURCE_LENGTH + 1,
        )
    lexer = _Lexer(source)
    tree = _Parser(lexer, lexer.run()).parse()
    return Condition(source, tuple(lexer.references), _compile_test(tree))
