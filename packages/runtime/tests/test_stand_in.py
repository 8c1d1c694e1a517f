"""vpp.runtime.testing: stand-in artifacts that load and act like exported ones."""

import numpy as np
import pytest

from vpp.runtime import Policy
from vpp.runtime.testing import StandInArtifact


@pytest.mark.parametrize("state", [True, False], ids=["with-state", "without-state"])
def test_a_stand_in_loads_and_acts_on_the_scale_of_its_bounds(tmp_path, state):
    spec = StandInArtifact(
        cameras=("scene",),
        image_size=16,
        chunk=3,
        action_low=(-0.1, 0.0),
        action_high=(0.1, 1.0),
        state_low=(-1.0,) * 2 if state else None,
        state_high=(1.0,) * 2 if state else None,
        instructions=("wave",),
    )
    policy = Policy.load(spec.write(tmp_path / "artifact"), threads=1, seed=0)
    assert tuple(policy.cameras) == ("scene",)
    rng = np.random.default_rng(0)
    observation = {"scene": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)}
    if state:
        observation["state"] = np.zeros(2, np.float32)
    actions = policy.act(observation, "wave")
    assert actions.shape == (3, 2) and np.isfinite(actions).all()
    # half the unit noise plus small input means, mapped from [-1, 1] onto each dimension's range
    centre, half_range = np.array([0.0, 0.5]), np.array([0.1, 0.5])
    assert (np.abs(actions - centre) < 3 * half_range).all()
    assert np.ptp(actions[:, 0]) > 0 and np.ptp(actions[:, 1]) > 0


def test_a_stand_in_refuses_mismatched_bounds():
    with pytest.raises(ValueError, match="differ in length"):
        StandInArtifact(action_low=(0.0,), action_high=(1.0, 1.0))
    with pytest.raises(ValueError, match="do not match"):
        StandInArtifact(state_low=None)
