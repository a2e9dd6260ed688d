"""Condition expressions: grammar, strict typing, sandboxing and robustness on any input."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernel.expressions as expressions
from kernel.errors import ExpressionError
from kernel.expressions import Condition, compile_condition
from kernel.references import Reference

CASES = Path(__file__).parent / "cases" / "expressions"
FAST = settings(deadline=timedelta(milliseconds=500), max_examples=500)


def load_cases(name: str) -> list[Any]:
    cases: list[dict[str, Any]] = json.loads((CASES / name).read_text(encoding="utf-8"))
    return [pytest.param(case, id=case["desc"]) for case in cases]


def lookup_in(values: dict[str, Any]) -> Callable[[Reference], Any]:
    """A VM-like lookup: walks the path, and reports a missing value as an ExpressionError."""

    def lookup(reference: Reference) -> Any:
        try:
            value = values[reference.root]
            for segment in reference.path:
                value = value[segment]
        except (KeyError, IndexError, TypeError):
            raise ExpressionError(f"no value for {reference.text}") from None
        return value

    return lookup


def evaluate(source: str, **values: Any) -> bool:
    return compile_condition(source).evaluate(lookup_in(values))


# --- table-driven cases -------------------------------------------------------------------------


@pytest.mark.parametrize("case", load_cases("parse_errors.json"))
def test_parse_error_case(case: dict[str, Any]) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_condition(case["source"])
    assert case["message"] in str(info.value)
    assert info.value.column == case["column"]


@pytest.mark.parametrize("case", load_cases("evaluation.json"))
def test_evaluation_case(case: dict[str, Any]) -> None:
    condition = compile_condition(case["source"])
    lookup = lookup_in(case["values"])
    if "error" in case:
        with pytest.raises(ExpressionError) as info:
            condition.evaluate(lookup)
        assert case["error"] in str(info.value)
    else:
        result = condition.evaluate(lookup)
        assert type(result) is bool
        assert result is case["expected"]


# --- precedence and grammar ---------------------------------------------------------------------


def test_not_binds_tighter_than_and() -> None:
    assert evaluate("not $a and $b", a=False, b=True) is True
    assert evaluate("not $a and $b", a=False, b=False) is False


def test_and_binds_tighter_than_or() -> None:
    assert evaluate("$a or $b and $c", a=True, b=False, c=False) is True


def test_parentheses_group_before_and() -> None:
    assert evaluate("($a or $b) and $c", a=True, b=False, c=False) is False


def test_not_in_is_one_operator_and_not_negates_a_whole_comparison() -> None:
    assert evaluate("$a not in $b", a="x", b=["y"]) is True
    assert evaluate("not $a in $b", a="x", b=["y"]) is True
    assert evaluate("not $a in $b", a="y", b=["y"]) is False


def test_contains_is_in_with_operands_swapped() -> None:
    assert evaluate("$b contains $a", a="ell", b="hello") is evaluate(
        "$a in $b", a="ell", b="hello"
    )


def test_keywords_need_no_spaces_around_parentheses_and_quotes() -> None:
    assert evaluate("not($a)and'x'in$b", a=False, b="xyz") is True


def test_error_column_is_also_in_the_message() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_condition("$a == 1 and # comment")
    assert info.value.column == 13
    assert "unexpected character '#' at column 13 in condition: $a == 1 and # comment" in str(
        info.value
    )


def test_nesting_up_to_the_limit_is_accepted() -> None:
    depth = expressions.MAX_NESTING
    assert evaluate("(" * depth + "$a" + ")" * depth, a=True) is True
    assert evaluate("not " * depth + "$a", a=True) is (depth % 2 == 0)
    assert evaluate("not (" * (depth // 2) + "$a" + ")" * (depth // 2), a=True) is True


@pytest.mark.parametrize(
    "source",
    [
        "(" * 65 + "$a" + ")" * 65,
        "not " * 65 + "$a",
        "not (" * 33 + "$a" + ")" * 33,
        "(" * 4000 + "$a" + ")" * 4000,
        "not " * 2500,
    ],
    ids=["parentheses", "not", "mixed", "very deep parentheses", "very many nots"],
)
def test_nesting_deeper_than_the_limit_is_an_expression_error(source: str) -> None:
    with pytest.raises(ExpressionError, match="nesting deeper than 64 levels"):
        compile_condition(source)


def test_source_longer_than_the_limit_is_rejected() -> None:
    limit = expressions.MAX_SOURCE_LENGTH
    assert compile_condition("$a" + " " * (limit - 2)).source.startswith("$a")
    with pytest.raises(ExpressionError, match="the limit is 10000") as info:
        compile_condition("$a" + " " * (limit - 1))
    assert info.value.column == limit + 1


def test_long_flat_boolean_chain_does_not_recurse() -> None:
    source = " and ".join(["$a"] * 1000) + " or " + " or ".join(["$b"] * 400)
    assert evaluate(source, a=True, b=False) is True


def test_astral_characters_and_lone_surrogates_inside_quotes_are_text() -> None:
    assert evaluate("$a == '😀'", a="😀") is True
    assert evaluate("$a == '\ud800'", a="\ud800") is True


# --- literals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("true", True),
        ("True", True),
        ("false", False),
        ("False", False),
        ("null", None),
        ("None", None),
        ("0", 0),
        ("-2", -2),
        ("1.5", 1.5),
        ("-0.25", -0.25),
        ("1e3", 1000.0),
        ("2E-2", 0.02),
        ("'it\\'s'", "it's"),
        ('"say \\"hi\\""', 'say "hi"'),
        ("'a\\\\b'", "a\\b"),
        ("'\\n\\t\\r'", "\n\t\r"),
        ("'\\u00e9\\u20AC'", "é€"),
        ("'$$'", "$"),
        ("''", ""),
    ],
)
def test_literal_has_the_written_value_and_type(literal: str, value: Any) -> None:
    assert evaluate(f"$x == {literal}", x=value) is True
    # Read the literal back through a list membership to check its exact Python type too.
    assert evaluate(f"{literal} in $x", x=[value]) is True
    if isinstance(value, bool) or value is None:
        assert evaluate(f"{literal} in $x", x=[int(bool(value))]) is False


# --- strict typing ------------------------------------------------------------------------------


def test_string_compared_with_number_is_an_error_naming_both_types() -> None:
    with pytest.raises(ExpressionError, match=r"cannot compare str 'yes' with int 10 using '=='"):
        evaluate("$x == 10", x="yes")


def test_string_ordered_against_number_is_an_error_naming_both_types() -> None:
    with pytest.raises(ExpressionError, match=r"cannot compare int 3 with str '4' using '<'"):
        evaluate("$x < '4'", x=3)


def test_bool_is_not_a_number() -> None:
    with pytest.raises(ExpressionError, match="cannot compare bool true with int 1"):
        evaluate("$x == 1", x=True)
    assert evaluate("true in $x", x=[1, 1.0]) is False


def test_null_equals_only_null_and_is_never_ordered() -> None:
    assert evaluate("$x == null", x=None) is True
    assert evaluate("$x == null", x=0) is False
    assert evaluate("null != $x", x="") is True
    with pytest.raises(ExpressionError, match="cannot compare null with int 0 using '<='"):
        evaluate("$x <= 0", x=None)


def test_membership_in_null_is_an_error() -> None:
    with pytest.raises(ExpressionError, match="cannot use 'in' with str 'a' and null"):
        evaluate("'a' in $x", x=None)


def test_enum_string_values_compare_as_strings() -> None:
    from kernel.statuses import TraceStatus

    assert evaluate("$x == 'SUCCESS'", x=TraceStatus.SUCCESS) is True
    assert evaluate("$x in 'SUCCESS FAILED'", x=TraceStatus.FAILED) is True


# --- references ---------------------------------------------------------------------------------


def test_references_lists_every_reference_in_order_of_appearance() -> None:
    condition = compile_condition(
        "$a.b == 'x' and ('$c' in ${d.0.e} or 'id $f and ${g}!' contains $a.b)"
    )
    assert [r.text for r in condition.references] == [
        "$a.b",
        "$c",
        "${d.0.e}",
        "$f",
        "${g}",
        "$a.b",
    ]
    assert condition.references[2] == Reference("d", (0, "e"), "${d.0.e}")


def test_condition_without_references_has_none() -> None:
    assert compile_condition("'$$a' == 'x' and 1 < 2").references == ()


def test_quoted_reference_is_read_as_that_value_with_its_type() -> None:
    assert evaluate("'yes' in '$decision'", decision="yes please") is True
    assert evaluate("'$n' > 2", n=3) is True
    assert evaluate("'$items' contains 2", items=[1, 2]) is True


def test_template_is_rendered_to_text() -> None:
    assert evaluate("'order $id: ${state}ing' == 'order 7: shipping'", id=7, state="shipp")


def test_python_attributes_are_not_reachable_through_references() -> None:
    seen: list[Reference] = []

    def lookup(reference: Reference) -> Any:
        seen.append(reference)
        return "x"

    assert compile_condition("$a.__class__ == 'x'").evaluate(lookup) is True
    assert seen == [Reference("a", ("__class__",), "$a.__class__")]


def test_lookup_errors_propagate_unchanged() -> None:
    error = ExpressionError("no value for $a")

    def lookup(reference: Reference) -> Any:
        raise error

    with pytest.raises(ExpressionError) as info:
        compile_condition("'x $a' == 'x'").evaluate(lookup)
    assert info.value is error


@pytest.mark.parametrize(
    "value",
    [
        "' or 'a'=='a",
        '" or "a"=="a',
        "x' or true or '",
        "$b",
        "${b}",
        ") or (true",
        "\\' or 1 == 1 or \\'",
    ],
)
def test_value_containing_quotes_or_syntax_does_not_alter_the_expression(value: str) -> None:
    assert evaluate("$a == 'x'", a=value, b="x") is False
    assert evaluate("'$a' == 'x'", a=value, b="x") is False
    assert evaluate("'v=$a' == 'v=x'", a=value, b="x") is False
    assert evaluate("'v=$a' == $c", a=value, b="x", c="v=" + value) is True


# --- the compiled form --------------------------------------------------------------------------


def test_condition_is_immutable_and_compares_by_source() -> None:
    condition = compile_condition("$a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        condition.source = "$b"  # type: ignore[misc]
    assert condition == compile_condition("$a")
    assert hash(condition) == hash(compile_condition("$a"))
    assert isinstance(condition, Condition)


def test_evaluation_does_no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    condition = compile_condition("not ($a == 'x $b' or '$c' in ${d}) and $e >= 1")

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsing at evaluation time")

    for name in ("_Lexer", "_Parser", "parse_template", "whole_reference"):
        monkeypatch.setattr(expressions, name, forbidden)
    values = {"a": "y", "b": 1, "c": "q", "d": "r", "e": 2}
    assert condition.evaluate(lookup_in(values)) is True


def test_values_nested_too_deeply_are_an_expression_error() -> None:
    deep: Any = []
    other: Any = []
    for _ in range(100_000):
        deep, other = [deep], [other]
    with pytest.raises(ExpressionError, match="nested too deeply"):
        evaluate("$a == $b", a=deep, b=other)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        evaluate("'v $a' == 'v'", a=deep)


def test_huge_integer_values_are_reported_without_crashing() -> None:
    with pytest.raises(ExpressionError, match="cannot compare int"):
        evaluate("$a == 'x'", a=10**5000)
    with pytest.raises(ExpressionError, match="cannot render int"):
        evaluate("'v $a' == 'x'", a=10**5000)


# --- properties ---------------------------------------------------------------------------------

# Any code point, lone surrogates included, mixed with characters the grammar cares about.
any_text = st.text(
    st.characters(exclude_categories=())
    | st.characters(categories=["Cs"])
    | st.sampled_from("()$'\"\\=<>!.-+0123456789eE {}_ andortuecisl"),
    max_size=200,
)
TOKENS = ["(", ")", "and", "or", "not", "==", "!=", "<", "in", "contains", "'x'", "$a", "1", " "]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=40)


@FAST
@given(any_text)
def test_compiling_any_text_raises_only_expression_error(source: str) -> None:
    try:
        compile_condition(source)
    except ExpressionError as error:
        assert error.column is not None and 1 <= error.column <= len(source) + 1


@FAST
@given(token_soup, st.sampled_from(["", " "]))
def test_compiling_any_token_sequence_raises_only_expression_error(
    tokens: list[str], separator: str
) -> None:
    source = separator.join(tokens)
    try:
        compile_condition(source)
    except ExpressionError as error:
        assert error.column is not None and 1 <= error.column <= len(source) + 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)
OPERANDS = ["$a", "$b", "$a.k", "$b.0", "'$a'", "'v=$b'", "'x'", "1", "-2.5", "true", "null"]
OPERATORS = ["==", "!=", "<", "<=", ">", ">=", "in", "not in", "contains"]
operands = st.sampled_from(OPERANDS)
comparisons = operands | st.builds(
    lambda left, op, right: f"{left} {op} {right}", operands, st.sampled_from(OPERATORS), operands
)
conditions = st.recursive(
    comparisons,
    lambda inner: (
        st.builds(lambda x: f"not {x}", inner)
        | st.builds(lambda x: f"({x})", inner)
        | st.builds(lambda x, op, y: f"{x} {op} {y}", inner, st.sampled_from(["and", "or"]), inner)
    ),
    max_leaves=6,
)


@FAST
@given(conditions, json_values, json_values)
def test_evaluation_returns_a_bool_or_raises_only_expression_error(
    source: str, a: Any, b: Any
) -> None:
    condition = compile_condition(source)
    try:
        result = condition.evaluate(lookup_in({"a": a, "b": b}))
    except ExpressionError:
        return
    assert type(result) is bool


boolean_conditions = st.recursive(
    st.sampled_from(["$a", "$b", "$c", "true", "false"]),
    lambda inner: (
        st.builds(lambda x: f"not {x}", inner)
        | st.builds(lambda x: f"({x})", inner)
        | st.builds(lambda x, y: f"({x}) == ({y})", inner, inner)
        | st.builds(lambda x, op, y: f"{x} {op} {y}", inner, st.sampled_from(["and", "or"]), inner)
    ),
    max_leaves=8,
)


@FAST
@given(boolean_conditions, st.booleans(), st.booleans(), st.booleans())
def test_precedence_matches_python_for_boolean_logic(
    source: str, a: bool, b: bool, c: bool
) -> None:
    python = source.replace("$", "").replace("true", "True").replace("false", "False")
    expected = bool(eval(python, {"__builtins__": {}}, {"a": a, "b": b, "c": c}))  # test oracle
    assert evaluate(source, a=a, b=b, c=c) is expected


def quote(text: str) -> str:
    """Write any text as a literal of the language."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("$", "$$")
    return "'" + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + "'"


@FAST
@given(st.text(max_size=50))
def test_any_text_round_trips_through_a_quoted_literal(text: str) -> None:
    assert evaluate(f"$a == {quote(text)}", a=text) is True
    assert compile_condition(quote(text)).references == ()


@FAST
@given(st.text(max_size=50), st.text(max_size=50))
def test_any_value_is_compared_as_data_never_as_syntax(value: str, other: str) -> None:
    assert evaluate(f"$a == {quote(other)}", a=value) is (value == other)
    assert evaluate("'[$a]' == $b", a=value, b=f"[{value}]") is True
