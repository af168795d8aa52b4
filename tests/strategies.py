"""Shared hypothesis strategies for the suite (re-exported by slither.testing.strategies)."""

from hypothesis import strategies as st

payloads = st.one_of(st.integers(-1000, 1000), st.text(max_size=8), st.floats(allow_nan=False, allow_infinity=False))
payload_lists = st.lists(payloads, max_size=60)
