"""A generated second dataset: card transactions with fraud bursts, and the accounts they belong to.

Nothing in the pipeline knows this dataset: configs/card_transactions.yaml alone
makes it run. `python -m tests.datasets.card_transactions OUT_DIR` writes it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from tests.datasets import main, write_csvs

START = dt.datetime(2024, 1, 1)
DAYS = 182
CATEGORIES = ["grocery", "fuel", "travel", "electronics", "restaurants", "online_services", "pharmacy", "jewelry"]


def generate(accounts: int = 1500, transactions: int = 60_000, seed: int = 7) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"A{i:05d}" for i in range(accounts)]
    typical = rng.lognormal(3.2, 0.6, accounts)
    account_table = pl.DataFrame(
        {
            "account": ids,
            "opened_year": rng.integers(2005, 2024, accounts).astype(np.int32),
            "country": rng.choice(["DE", "FR", "NL", "PL", "ES"], accounts, p=[0.4, 0.2, 0.15, 0.15, 0.1]),
        }
    )
    who = rng.integers(0, accounts, transactions)
    seconds = np.sort(rng.uniform(0, DAYS * 86400, transactions))
    category = rng.choice(len(CATEGORIES), transactions)
    channel = rng.choice(["pos", "web", "atm"], transactions, p=[0.6, 0.3, 0.1])
    amount = typical[who] * rng.lognormal(0, 0.5, transactions)
    fraud = np.zeros(transactions, dtype=np.int32)
    # Fraud comes in bursts: a compromised account makes several large web purchases within the hour.
    # Legitimate bursts look alike (a shopping trip), so neither speed nor size alone gives fraud away.
    bursts = rng.choice(transactions, transactions // 100, replace=False)
    rows = []
    for b, start in enumerate(bursts):
        is_fraud_burst = b % 2 == 0
        n = int(rng.integers(2, 6))
        offsets = np.sort(rng.uniform(0, 3600, n))
        for k, off in enumerate(offsets):
            rows.append(
                (
                    int(who[start]),
                    float(seconds[start] + off),
                    int(rng.choice([3, 4, 7]) if is_fraud_burst else rng.choice(len(CATEGORIES))),
                    "web" if rng.random() < (0.6 if is_fraud_burst else 0.3) else "pos",
                    float(typical[who[start]] * rng.lognormal(0.6 if is_fraud_burst else 0.2, 0.7)),
                    int(is_fraud_burst and (k > 0 or rng.random() < 0.5) and rng.random() < 0.9),
                )
            )
    extra = np.array(rows, dtype=object)
    frame = pl.DataFrame(
        {
            "account": [ids[i] for i in who] + [ids[int(i)] for i in extra[:, 0]],
            "ts": [START + dt.timedelta(seconds=float(s)) for s in seconds]
            + [START + dt.timedelta(seconds=float(s)) for s in extra[:, 1]],
            "merchant_category": [CATEGORIES[c] for c in category] + [CATEGORIES[int(c)] for c in extra[:, 2]],
            "channel": list(channel) + list(extra[:, 3]),
            "amount": np.round(np.concatenate([amount, extra[:, 4].astype(float)]), 2),
            "is_fraud": np.concatenate([fraud, extra[:, 5].astype(np.int32)]),
        }
    ).sort("ts")
    # Written in UTC with an explicit offset: naive local times would include the DST gap.
    frame = frame.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return frame.with_row_index("txn_id", offset=1).with_columns(pl.col("txn_id").cast(pl.Int64)), account_table


def write(folder: Path) -> dict[str, Path]:
    transactions, accounts = generate()
    return write_csvs(
        folder, {"transactions": ("card_transactions.csv", transactions), "accounts": ("accounts.csv", accounts)}
    )


if __name__ == "__main__":
    main(write)
