"""The one canonical text of an exact number, shared by the math data (gold answers) and the math
metric (predictions), so equal numbers are always written the same way: `"1000"`, `"-3.5"`,
`"0.4"` (a terminating decimal, printed exactly), `"1/3"` (otherwise, reduced).

This module sits on the lowest floor: it imports nothing of peftlab's.
"""

from __future__ import annotations

from fractions import Fraction


def canonical_number(value: Fraction) -> str:
    """Canonical text for an exact value (see the module docstring)."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # terminating decimal: print it exactly (no float rounding)
        places = 0
        while (value * 10**places).denominator != 1:
            places += 1
        scaled = abs(value.numerator * 10**places // value.denominator)
        sign = "-" if value < 0 else ""
        whole, frac = divmod(scaled, 10**places)
        return f"{sign}{whole}.{frac:0{places}d}"
    return f"{value.numerator}/{value.denominator}"
