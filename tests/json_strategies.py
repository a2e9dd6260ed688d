"""Hypothesis strategies for JSON values: the canonical fast path's domain and all JSON."""

from __future__ import annotations

import operator

from hypothesis import strategies as st

from kernel.canonical import MAX_SAFE_INTEGER

safe_ints = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
bmp_text = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)))
any_text = st.text(st.characters(exclude_categories=("Cs",)))
plain_floats = st.floats(min_value=1e-4, max_value=1e16, exclude_max=True).filter(
    lambda value: not value.is_integer()
)
integral_floats = safe_ints.map(float) | st.just(-0.0)
plain_json = st.recursive(
    st.none()
    | st.booleans()
    | safe_ints
    | any_text
    | plain_floats
    | plain_floats.map(operator.neg)
    | integral_floats,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(bmp_text, inner, max_size=5),
    max_leaves=30,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | any_text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
    max_leaves=30,
)
