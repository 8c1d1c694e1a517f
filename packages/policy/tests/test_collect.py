import json

import numpy as np
import pytest

pytest.importorskip("metaworld")

from vpp.policy.collect import collect_metaworld
from vpp.policy.data import LeRobotEpisodeSource, PolicyWindowDataset
from vpp.data.lerobot import LeRobotDataset
from vpp.tvp.data.mixture import MixtureClipDataset
from vpp.tvp.data.sources import LeRobotClipSource


def test_collection_resumes_and_feeds_both_stages(tmp_path):
    out = tmp_path / "mw"
    collect_metaworld(out, tasks=["reach"], episodes_per_task=1, cameras=["corner", "topview"], image_size=32, progress=False)
    state = collect_metaworld(out, tasks=["reach", "door-open"], episodes_per_task=2, cameras=["corner", "topview"], image_size=32, progress=False)
    assert state.tasks["reach"].kept == 2 and state.tasks["reach"].next_attempt >= 2
    dataset = LeRobotDataset(out)
    assert dataset.num_episodes == 4
    tasks = [dataset.episode(i).task for i in range(4)]
    assert tasks.count("move the gripper to the goal") == 2
    episode = dataset.episode(0)
    actions = episode.column("action")
    assert actions.shape == (episode.length, 4) and np.abs(actions).max() <= 1
    assert episode.read_frames("observation.images.corner", [0, episode.length - 1]).shape == (2, 32, 32, 3)

    with pytest.raises(ValueError, match="collected with"):
        collect_metaworld(out, tasks=["reach"], episodes_per_task=3, cameras=["corner"], image_size=32, progress=False)

    windows = PolicyWindowDataset([LeRobotEpisodeSource(out)], ["corner", "topview"], chunk=4, image_size=32, state_dim=4)
    assert windows.report.accepted == 4
    assert windows[0]["images"].shape == (2, 3, 32, 32) and windows[0]["state"].shape == (4,)
    clips = MixtureClipDataset([LeRobotClipSource(out, camera="corner")], num_frames=8, image_size=32)
    assert clips[0]["video"].shape == (8, 3, 32, 32)
    assert json.loads((out / "collection_state.json").read_text())["config"]["cameras"] == ["corner", "topview"]
