"""A generated example of one daily series: a city's electricity demand, 2020-2023, one row a day.

Demand rises with heating below 14 °C and with cooling above 22 °C (a V in temperature), is lower on
weekends and holidays, and carries a slowly fading disturbance from day to day (AR(1), 0.85 a day),
so yesterday's demand and last week's mean tell a lot about today's beyond the calendar and the
temperature forecast. configs/examples/daily_demand.yaml predicts at midnight whether the day's
demand exceeds HIGH_DEMAND.
`python -m tests.datasets.daily_demand OUT_DIR` writes it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from tests.datasets import main, write_csvs

FIRST_DAY = dt.date(2020, 1, 1)
LAST_DAY = dt.date(2023, 12, 31)
HIGH_DEMAND = 113.0  # MWh: the config's target threshold; about half the days are above it
# Fixed-date public holidays (month, day); a few movable ones are drawn per year.
FIXED_HOLIDAYS = [(1, 1), (5, 1), (10, 3), (12, 25), (12, 26)]
WEEKDAY_EFFECT = np.array([7.0, 9.0, 9.0, 8.0, 3.0, -14.0, -22.0])  # Monday .. Sunday


def generate(seed: int = 5) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    days = pl.date_range(FIRST_DAY, LAST_DAY, "1d", eager=True)
    n = days.len()
    day_of_year = days.dt.ordinal_day().to_numpy()
    weekday = days.dt.weekday().to_numpy() - 1  # 0 = Monday
    weather = np.zeros(n)
    disturbance = np.zeros(n)
    for i in range(1, n):
        weather[i] = 0.7 * weather[i - 1] + rng.normal(0.0, 2.5)
        disturbance[i] = 0.85 * disturbance[i - 1] + rng.normal(0.0, 4.0)
    temperature = 11.0 + 10.0 * np.sin(2 * np.pi * (day_of_year - 110) / 365.25) + weather
    holiday = np.zeros(n, dtype=bool)
    for year in range(FIRST_DAY.year, LAST_DAY.year + 1):
        dates = [dt.date(year, m, d) for m, d in FIXED_HOLIDAYS]
        dates += [dt.date(year, 1, 1) + dt.timedelta(days=int(k)) for k in rng.choice(365, 4, replace=False)]
        holiday |= days.is_in(dates).to_numpy()
    demand = (
        100.0
        + 2.2 * np.maximum(0.0, 14.0 - temperature)
        + 4.0 * np.maximum(0.0, temperature - 20.0)
        + WEEKDAY_EFFECT[weekday]
        - 14.0 * holiday
        + disturbance
    )
    return pl.DataFrame(
        {
            "day": days,
            "demand": np.round(demand, 2),
            "temperature": np.round(temperature, 1),
            "holiday": holiday,
        }
    )


def write(folder: Path) -> dict[str, Path]:
    return write_csvs(folder, {"demand": ("daily_demand.csv", generate())})


if __name__ == "__main__":
    main(write)
