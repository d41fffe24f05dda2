"""Money and hardware prices for the cost policies.

Money is ``Decimal`` US dollars quantized to whole micro-dollars ($0.000001). Quantized decimals add and
subtract exactly, so ledger totals never drift the way float sums do, and amounts keep the readable ``_usd``
names used in configuration. Costs derived by division (a price per hour applied to seconds) are rounded *up*
to the next micro-dollar, so an estimate never undercounts what Hugging Face will bill.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from enum import Enum

MICRO_USD = Decimal("0.000001")

# Hugging Face Jobs bill "by the minute": every started minute counts as a whole one.
BILLING_GRANULARITY_SECONDS = 60


def usd(amount: Decimal | int | float | str) -> Decimal:
    """Return ``amount`` as dollars quantized to micro-dollars.

    Floats go through ``str`` first so a configured ``0.1`` becomes exactly $0.100000 rather than the binary
    approximation. Raises ``ValueError`` for NaN, infinities and text that is not a number.
    """
    try:
        value = Decimal(str(amount)) if isinstance(amount, float) else Decimal(amount)
    except ArithmeticError as e:
        raise ValueError(f"not an amount of money: {amount!r}") from e
    if not value.is_finite():
        raise ValueError(f"not an amount of money: {amount!r}")
    return value.quantize(MICRO_USD, rounding=ROUND_HALF_EVEN)


def usd_ceil(amount: Decimal) -> Decimal:
    """Round a derived cost up to the next micro-dollar (never undercount a bill)."""
    return amount.quantize(MICRO_USD, rounding=ROUND_CEILING)


def format_usd(amount: Decimal) -> str:
    """Render dollars for reasons and logs: cents always shown, sub-cent digits only when present."""
    value = usd(amount)
    text = f"{abs(value):f}".rstrip("0")
    whole, _, frac = text.partition(".")
    sign = "-" if value < 0 else ""
    return f"{sign}${whole}.{frac.ljust(2, '0')}"


class PriceUnit(str, Enum):
    """The time unit a published price is quoted in."""

    HOUR = "hour"
    MINUTE = "minute"
    SECOND = "second"

    @property
    def seconds(self) -> int:
        return {PriceUnit.HOUR: 3600, PriceUnit.MINUTE: 60, PriceUnit.SECOND: 1}[self]


@dataclass(frozen=True)
class FlavorPrice:
    """Price of one Hugging Face Jobs hardware flavor.

    ``unit_cost_usd`` is the price of one ``unit_label`` of running time; ``accelerator`` is True for GPU
    flavors. Raises ``ValueError`` on a negative price or an unknown unit.
    """

    name: str
    unit_cost_usd: Decimal
    unit_label: PriceUnit = PriceUnit.HOUR
    accelerator: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit_cost_usd", usd(self.unit_cost_usd))
        object.__setattr__(self, "unit_label", PriceUnit(self.unit_label))
        if self.unit_cost_usd < 0:
            raise ValueError(f"flavor {self.name!r} has a negative price {self.unit_cost_usd}")

    @property
    def usd_per_second(self) -> Decimal:
        """Unrounded dollars per second of running time."""
        return self.unit_cost_usd / self.unit_label.seconds


# Every hardware flavor the Jobs API accepts: huggingface_hub's ``JobHardware`` (2.4), which its maintainers keep
# in sync with the Hub (tests/test_policies_flavor.py fails when the installed client disagrees). A flavor in
# configuration or a sidecar must be one of these; the Hub's own list, read at connect, has the prices.
JOB_FLAVORS: tuple[str, ...] = (
    "cpu-basic", "cpu-upgrade", "cpu-performance", "cpu-xl",
    "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4", "l40sx8",
    "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "a100x4", "a100x8",
    "h200", "h200x2", "h200x4", "h200x8", "rtx-pro-6000", "rtx-pro-6000x2", "rtx-pro-6000x4", "rtx-pro-6000x8",
)  # fmt: skip

# Fallback only: the daemon prefers prices fetched from the Hub and uses these when it cannot. Hourly prices as
# published on https://huggingface.co/docs/hub/jobs-pricing (billed per minute); the CPU and T4 rows re-read on
# 2026-12-06, the others as recorded before. Single-GPU flavors only: pyannote uses one GPU, so a multi-GPU
# flavor costs more for the same speed. A wrong entry here only skews flavor choice and budget estimates until the
# Hub's list is read.
FALLBACK_PRICES_DATE = "2026-12-06"
FALLBACK_PRICES: tuple[FlavorPrice, ...] = (
    FlavorPrice("cpu-basic", Decimal("0.01"), PriceUnit.HOUR, accelerator=False),
    FlavorPrice("cpu-upgrade", Decimal("0.03"), PriceUnit.HOUR, accelerator=False),
    FlavorPrice("t4-small", Decimal("0.40"), PriceUnit.HOUR, accelerator=True),
    FlavorPrice("t4-medium", Decimal("0.60"), PriceUnit.HOUR, accelerator=True),
    FlavorPrice("l4x1", Decimal("0.80"), PriceUnit.HOUR, accelerator=True),
    FlavorPrice("l40sx1", Decimal("1.80"), PriceUnit.HOUR, accelerator=True),
    FlavorPrice("a10g-small", Decimal("1.00"), PriceUnit.HOUR, accelerator=True),
    FlavorPrice("a10g-large", Decimal("1.50"), PriceUnit.HOUR, accelerator=True),
    FlavorPrice("a100-large", Decimal("2.50"), PriceUnit.HOUR, accelerator=True),
    FlavorPrice("h200", Decimal("5.00"), PriceUnit.HOUR, accelerator=True),
)


def unknown_flavor(name: str) -> str | None:
    """Why ``name`` is not a Jobs flavor (the message names the valid ones), or None when it is one."""
    if name in JOB_FLAVORS:
        return None
    return f"{name!r} is not a Hugging Face Jobs hardware flavor; valid flavors: {', '.join(JOB_FLAVORS)}"
