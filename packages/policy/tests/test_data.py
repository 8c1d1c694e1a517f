import numpy as np
import pytest
import torch

from vpp.policy.data import ArrayEpisodeSource, NoValidEpisodesError, PolicyWindowDataset, collate_windows


def episode(
    length=12, cameras=("static", "wrist"), action_dim=4, state_dim=3, instruction="open the drawer", seed=0
):
    rng = np.random.default_rng(seed)
    return {
        "frames": {c: rng.integers(0, 256, (length, 24, 24, 3), dtype=np.uint8) for c in cameras},
        "actions": rng.uniform(-1, 1, (length, action_dim)).astype(np.float32),
        "state": rng.normal(size=(length, state_dim)).astype(np.float32),
        "instruction": instruction,
    }


def test_windows_pair_the_current_frames_with_the_next_chunk():
    data = episode()
    dataset = PolicyWindowDataset(
        [ArrayEpisodeSource([data])], ["static", "wrist"], chunk=4, image_size=16, state_dim=3
    )
    assert len(dataset) == 12 - 4 + 1
    item = dataset[5]
    assert item["images"].shape == (2, 3, 16, 16)
    assert torch.equal(item["actions"], torch.from_numpy(data["actions"][5:9]))
    assert torch.equal(item["state"], torch.from_numpy(data["state"][5]))
    # camera order is the configured one
    swapped = PolicyWindowDataset([ArrayEpisodeSource([data])], ["wrist", "static"], chunk=4, image_size=16)
    assert torch.equal(swapped[5]["images"][0], item["images"][1])
    batch = collate_windows([dataset[0], dataset[1]])
    assert batch["images"].shape == (2, 2, 3, 16, 16) and batch["actions"].shape == (2, 4, 4)


def test_bad_episodes_are_rejected_with_the_reason():
    nan = episode(seed=1)
    nan["actions"][7, 2] = np.nan
    mismatch = episode(seed=2)
    mismatch["frames"]["wrist"] = mismatch["frames"]["wrist"][:-2]
    short = episode(length=3, seed=3)
    no_text = episode(seed=4, instruction="  ")
    no_camera = episode(seed=5, cameras=("static",))
    good = episode(seed=6)
    source = ArrayEpisodeSource([nan, mismatch, short, no_text, no_camera, good])
    dataset = PolicyWindowDataset([source], ["static", "wrist"], chunk=4, image_size=16)
    assert dataset.report.accepted == 1
    reasons = "\n".join(dataset.report.rejected)
    assert "NaN/inf (first at timestep 7)" in reasons
    assert "camera 'wrist' has 10 frames but there are 12 actions" in reasons
    assert "shorter than one action chunk" in reasons
    assert "no instruction" in reasons
    assert "no camera 'wrist'" in reasons
    assert dataset.episodes[0].key == "arrays/5"


def test_state_required_when_the_policy_uses_it():
    data = episode()
    del data["state"]
    with pytest.raises(NoValidEpisodesError, match="proprioception"):
        PolicyWindowDataset([ArrayEpisodeSource([data])], ["static"], chunk=4, image_size=16, state_dim=3)
