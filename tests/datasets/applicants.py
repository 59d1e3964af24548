"""A generated example without time: loan applicants, of whom few (about 4 %) default.

One row per applicant, no time column: configs/examples/applicants.yaml splits it stratified by the
target. The default risk is logistic in the applicant's history and loan size, plus two shapes a
linear model cannot draw: a risk that rises at both ends of the age range, and a jump when a high
debt ratio meets an irregular income (self-employed or contract work). Trees find both; the logistic
baseline does not, so the model beats it clearly.
`python -m tests.datasets.applicants OUT_DIR` writes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tests.datasets import main, write_csvs

EMPLOYMENT = ["salaried", "self_employed", "contract", "unemployed", "retired"]
REGIONS = ["capital", "north", "south", "east", "west"]


def generate(applicants: int = 20_000, seed: int = 11) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(19, 76, applicants)
    employment = rng.choice(len(EMPLOYMENT), applicants, p=[0.58, 0.15, 0.15, 0.05, 0.07])
    region = rng.choice(len(REGIONS), applicants, p=[0.3, 0.2, 0.2, 0.15, 0.15])
    income_scale = np.array([1.0, 1.1, 0.85, 0.35, 0.6])[employment]
    income = np.round(rng.lognormal(np.log(42_000), 0.45, applicants) * income_scale, -2)
    debt_ratio = np.round(rng.beta(2.0, 4.5, applicants), 3)
    loan_amount = np.round(income * rng.uniform(0.05, 0.9, applicants), -2)
    past_defaults = np.minimum(rng.poisson(0.15, applicants), 5)
    irregular = np.isin(employment, [EMPLOYMENT.index("self_employed"), EMPLOYMENT.index("contract")])
    logit = (
        -5.9
        + 1.0 * past_defaults
        + 1.2 * loan_amount / income
        - 0.6 * np.log(income / 42_000)
        + 0.8 * ((age - 45) / 15) ** 2  # young and old borrowers both default more
        + 2.8 * ((debt_ratio > 0.45) & irregular)  # a threshold inside one group: a tree's split, not a slope
        + 0.3 * (region == REGIONS.index("east"))
    )
    defaulted = rng.random(applicants) < 1 / (1 + np.exp(-logit))
    return pl.DataFrame(
        {
            "applicant_id": np.arange(1, applicants + 1, dtype=np.int64),
            "age": age.astype(np.int32),
            "employment_type": [EMPLOYMENT[e] for e in employment],
            "region": [REGIONS[r] for r in region],
            "income": income,
            "debt_ratio": debt_ratio,
            "loan_amount": loan_amount,
            "past_defaults": past_defaults.astype(np.int32),
            "defaulted": defaulted.astype(np.int32),
        }
    )


def write(folder: Path) -> dict[str, Path]:
    return write_csvs(folder, {"applicants": ("applicants.csv", generate())})


if __name__ == "__main__":
    main(write)
