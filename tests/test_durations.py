import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.durations import DurationError, format_duration, parse_duration, parse_ttl


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("900", 900), ("900s", 900), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2d", 172800), ("1h0m5s", 3605)],
)
def test_accepted(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-5", "1.5h", "30m1h", "1h1h", "h", "m5", " 15m", "15m ", "１５", "1e3"])
def test_rejected(text):
    with pytest.raises(DurationError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0", "0s", "37h", "99999999999999999999h"])
def test_ttl_range(text):
    with pytest.raises(DurationError):
        parse_ttl(text)


@given(st.integers(min_value=1, max_value=10**9))
def test_format_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.text(max_size=20))
def test_parser_never_crashes(text):
    try:
        value = parse_duration(text)
    except DurationError:
        return
    assert isinstance(value, int) and value >= 0


@given(
    st.lists(st.sampled_from("dhms"), min_size=1, max_size=4, unique=True),
    st.lists(st.integers(0, 999), min_size=4, max_size=4),
)
def test_any_ordered_combination_parses(units, counts):
    units = sorted(units, key="dhms".index)
    text = "".join(f"{n}{u}" for n, u in zip(counts, units, strict=False))
    expected = sum(n * {"d": 86400, "h": 3600, "m": 60, "s": 1}[u] for n, u in zip(counts, units, strict=False))
    assert parse_duration(text) == expected
