"""A generated example of repeated entities: clinic visits of patients, each visit possibly ending in admission.

Two tables: patients (birth year, sex, region) and their 1-15 visits each (type, blood pressure, BMI,
glucose, heart rate). Admission depends on the visit's measurements and type, on the patient's age,
and strongly on a per-patient frailty that no column shows. A patient's BMI and blood pressure barely
change from visit to visit, so a model can recognise a patient it has seen: split by visit, the test
part rewards that memory (deep trees, 63 leaves of 5 rows, score about 0.04 AUC higher than split by
patient; the config's leaves of 20 rows memorise less). configs/examples/visits.yaml splits by patient.
`python -m tests.datasets.visits OUT_DIR` writes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tests.datasets import main, write_csvs

VISIT_TYPES = ["routine", "follow_up", "urgent", "telehealth"]
REGIONS = ["north", "south", "east", "west"]
# Year the measurements are taken in: age at the visit is this minus the birth year.
VISIT_YEAR = 2023


def generate(patients: int = 2000, seed: int = 3) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    birth_year = rng.integers(1935, 2006, patients)
    age = VISIT_YEAR - birth_year
    frailty = rng.normal(0.0, 1.5, patients)  # the per-patient random effect: hidden, and large
    base_bmi = rng.normal(27.0, 4.5, patients)
    base_systolic = rng.normal(118.0, 12.0, patients) + 0.35 * (age - 18)
    base_glucose = rng.normal(98.0, 10.0, patients) + 45.0 * (rng.random(patients) < 0.12)  # some diabetics
    patient_table = pl.DataFrame(
        {
            "patient_id": [f"P{i:05d}" for i in range(1, patients + 1)],
            "birth_year": birth_year.astype(np.int32),
            "sex": rng.choice(["F", "M"], patients),
            "region": rng.choice(REGIONS, patients, p=[0.3, 0.3, 0.2, 0.2]),
        }
    )

    who = np.repeat(np.arange(patients), rng.integers(1, 16, patients))
    n = who.size
    kind = rng.choice(len(VISIT_TYPES), n, p=[0.5, 0.25, 0.15, 0.1])
    urgent = kind == VISIT_TYPES.index("urgent")
    systolic = base_systolic[who] + rng.normal(0.0, 7.0, n) + 8.0 * urgent
    glucose = base_glucose[who] + rng.normal(0.0, 12.0, n) + 20.0 * urgent * (rng.random(n) < 0.5)
    heart_rate = rng.normal(72.0, 9.0, n) + 12.0 * urgent
    bmi = base_bmi[who] + rng.normal(0.0, 0.4, n)
    logit = (
        -3.6
        + frailty[who]
        + 1.0 * urgent
        + 1.8 * (urgent & (age[who] >= 70))  # an urgent visit of an old patient: a tree's split, not a slope
        - 0.8 * (kind == VISIT_TYPES.index("telehealth"))
        + 1.5 * (glucose > 160.0)  # uncontrolled diabetes: a threshold
        + 0.7 * ((bmi - 25.0) / 5.0) ** 2  # underweight and obese patients both: a curve, not a slope
        + 0.02 * (systolic - 130.0)
        + 0.03 * (heart_rate - 72.0)
        + 0.015 * (age[who] - 50)
    )
    visit_table = pl.DataFrame(
        {
            "visit_id": np.arange(1, n + 1, dtype=np.int64),
            "patient_id": patient_table["patient_id"].to_numpy()[who],
            "visit_type": [VISIT_TYPES[k] for k in kind],
            "systolic_bp": np.round(systolic, 0),
            "bmi": np.round(bmi, 1),
            "glucose": np.round(glucose, 0),
            "heart_rate": np.round(heart_rate, 0),
            "admitted": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int32),
        }
    )
    return visit_table, patient_table


def write(folder: Path) -> dict[str, Path]:
    visits, patients = generate()
    return write_csvs(folder, {"visits": ("visits.csv", visits), "patients": ("patients.csv", patients)})


if __name__ == "__main__":
    main(write)
