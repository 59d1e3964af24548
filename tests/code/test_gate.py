from __future__ import annotations

from fusion.core.settings import GateConfig
from tasks.register import decide


def test_first_model_becomes_champion() -> None:
    assert decide(0.70, None, GateConfig(min_delta=0.01)) == (True, "no champion yet")


def test_challenger_must_beat_champion_by_min_delta() -> None:
    gate = GateConfig(min_delta=0.005)
    promoted, reason = decide(0.7760, 0.7700, gate)
    assert promoted and "beats champion 0.7700 by +0.0060" in reason
    promoted, reason = decide(0.7740, 0.7700, gate)
    assert not promoted and "+0.0040 < min_delta 0.005" in reason
    assert not decide(0.75, 0.77, gate)[0]


def test_zero_delta_promotes_on_a_tie() -> None:
    assert decide(0.77, 0.77, GateConfig(min_delta=0.0))[0]
