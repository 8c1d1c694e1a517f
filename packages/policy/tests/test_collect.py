import json

import numpy as np
import pytest

pytest.importorskip("metaworld")

from vpp.policy.collect import STATE_FILE, OldCollectionError, collect_metaworld, collected_configurations
from vpp.policy.envs.metaworld import MetaWorldTask
from vpp.policy.evaluate import evaluate_metaworld
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
    # single-pixel details survive: lossless 4:4:4 video by default
    info = json.loads((out / "meta" / "info.json").read_text())["features"]["observation.images.corner"]["info"]
    assert info["video.pix_fmt"] == "yuv444p"


def test_collection_records_configurations_that_evaluation_never_uses(tmp_path):
    out = tmp_path / "mw"
    collect_metaworld(out, tasks=["reach"], episodes_per_task=3, image_size=32, progress=False)
    configurations = collected_configurations(out)
    assert sorted(configurations) == [0, 1, 2]
    with MetaWorldTask("reach", image_size=32) as env:
        for task, kept in configurations.values():
            env.reset(kept.attempt, "train")
            assert task == "reach" and env.rand_vec.tolist() == kept.rand_vec
    evaluated = evaluate_metaworld("oracle", ["reach"], episodes=3, cameras=["corner"], image_size=32, max_steps=1, progress=False)
    collected = np.array([kept.rand_vec for _, kept in configurations.values()])
    assert len(evaluated["episodes"]) == 3
    for episode in evaluated["episodes"]:
        assert np.abs(collected - np.array(episode["rand_vec"])).max(axis=1).min() > 1e-3


def test_a_killed_writer_commit_is_recorded_once(tmp_path):
    out = tmp_path / "mw"
    collect_metaworld(out, tasks=["reach"], episodes_per_task=2, image_size=32, progress=False)
    # as if killed after the dataset committed episode 1 but before the state recorded it
    saved = json.loads((out / STATE_FILE).read_text())
    last = saved["tasks"]["reach"]["episodes"].pop()
    saved["tasks"]["reach"].update(kept=1, next_attempt=last["attempt"])
    saved["pending"] = {"task": "reach", **last}
    (out / STATE_FILE).write_text(json.dumps(saved))
    state = collect_metaworld(out, tasks=["reach"], episodes_per_task=3, image_size=32, progress=False)
    assert LeRobotDataset(out).num_episodes == 3 and state.tasks["reach"].kept == 3
    attempts = [e.attempt for e in state.tasks["reach"].episodes]
    assert [e.episode_index for e in state.tasks["reach"].episodes] == [0, 1, 2] and len(set(attempts)) == 3


def test_a_folder_collected_by_the_old_scheme_is_refused(tmp_path):
    out = tmp_path / "mw"
    collect_metaworld(out, tasks=["reach"], episodes_per_task=1, image_size=32, progress=False)
    saved = json.loads((out / STATE_FILE).read_text())
    old = {"config": {k: saved["config"][k] for k in ("cameras", "image_size", "fps")},
           "tasks": {"reach": {"next_attempt": 1, "kept": 1, "dropped": 0}}}
    (out / STATE_FILE).write_text(json.dumps(old))
    with pytest.raises(OldCollectionError, match="old scheme"):
        collect_metaworld(out, tasks=["reach"], episodes_per_task=2, image_size=32, progress=False)
    (out / STATE_FILE).unlink()
    with pytest.raises(OldCollectionError, match="no collection_state.json"):
        collect_metaworld(out, tasks=["reach"], episodes_per_task=2, image_size=32, progress=False)
