"""Parse durations such as `900`, `900s`, `15m`, `1h`, `1h30m` into whole seconds.

Standard library only and no `re`: the cache-hit path parses `--ttl` before it knows whether it
can answer from the cache.
"""

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class DurationError(ValueError):
    """The text is not a duration this tool understands."""


def parse_duration(text: str) -> int:
    """Return the number of seconds `text` names; raise DurationError otherwise.

    A bare number is seconds. Otherwise one or more `<digits><unit>` parts with units d, h, m, s,
    each unit at most once and from largest to smallest (`1h30m`, not `30m1h`).
    """
    if not isinstance(text, str) or not text or not text.isascii():
        raise DurationError(f"invalid duration {text!r}: use seconds or e.g. 15m, 1h, 1h30m")
    if text.isdigit():
        return int(text)
    total = 0
    digits = ""
    last_rank = len(UNIT_SECONDS)
    ranks = {unit: rank for rank, unit in enumerate(UNIT_SECONDS)}  # s=0, m=1, h=2, d=3
    for char in text:
        if char.isdigit():
            digits += char
            continue
        rank = ranks.get(char)
        if rank is None or not digits or rank >= last_rank:
            raise DurationError(f"invalid duration {text!r}: use seconds or e.g. 15m, 1h, 1h30m")
        total += int(digits) * UNIT_SECONDS[char]
        digits, last_rank = "", rank
    if digits:
        raise DurationError(f"invalid duration {text!r}: a number needs a unit after another part")
    return total


def parse_ttl(text: str, *, minimum: int = 1, maximum: int = 36 * 3600) -> int:
    """A credential lifetime: a duration between `minimum` and `maximum` seconds (AWS's 36 h cap)."""
    seconds = parse_duration(text)
    if not minimum <= seconds <= maximum:
        raise DurationError(
            f"duration {text!r} is out of range: give between {format_duration(minimum)} and {format_duration(maximum)}"
        )
    return seconds


def format_duration(seconds: int) -> str:
    """The inverse of parse_duration for display: 5400 -> '1h30m', 45 -> '45s', 0 -> '0s'."""
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in reversed(UNIT_SECONDS.items()):
        if seconds >= size:
            count, seconds = divmod(seconds, size)
            parts.append(f"{count}{unit}")
    return "".join(parts)
