from __future__ import annotations

import pytest

from fusion.core.settings import GateConfig
from tasks.register import decide


def test_first_model_becomes_champion_when_it_beats_the_baseline() -> None:
    promoted, reason = decide(0.70, None, GateConfig(min_delta=0.01), baseline_auc=0.65)
    assert promoted and reason == "no champion yet; test_auc 0.7000 beats the baseline's 0.6500"


def test_first_model_that_loses_to_the_baseline_is_not_champion() -> None:
    # the survey case of issue 14: 0.7460 vs baseline 0.7462 was promoted because no champion existed
    promoted, reason = decide(0.7460, None, GateConfig(), baseline_auc=0.7462)
    assert not promoted and reason == "test_auc 0.7460 does not beat the baseline's 0.7462 (-0.0002)"
    assert not decide(0.70, None, GateConfig(), baseline_auc=0.70)[0]  # a tie does not beat it


def test_the_baseline_decides_before_the_champion() -> None:
    # better than the champion by far, but not better than the baseline
    promoted, reason = decide(0.80, 0.60, GateConfig(), baseline_auc=0.81)
    assert not promoted and "baseline" in reason and "champion" not in reason


def test_without_the_baseline_requirement_the_first_model_is_champion() -> None:
    gate = GateConfig(require_beat_baseline=False)
    assert decide(0.60, None, gate, baseline_auc=0.90) == (True, "no champion yet")
    assert decide(0.60, None, gate) == (True, "no champion yet")


def test_the_requirement_needs_a_baseline_score() -> None:
    with pytest.raises(ValueError, match="baseline"):
        decide(0.70, None, GateConfig())


def test_challenger_must_beat_champion_by_min_delta() -> None:
    gate = GateConfig(min_delta=0.005)
    promoted, reason = decide(0.7760, 0.7700, gate, baseline_auc=0.70)
    assert promoted and "beats champion 0.7700 by +0.0060" in reason
    promoted, reason = decide(0.7740, 0.7700, gate, baseline_auc=0.70)
    assert not promoted and "+0.0040 < min_delta 0.005" in reason
    assert not decide(0.75, 0.77, gate, baseline_auc=0.70)[0]


def test_zero_delta_promotes_on_a_tie() -> None:
    assert decide(0.77, 0.77, GateConfig(min_delta=0.0), baseline_auc=0.70)[0]
