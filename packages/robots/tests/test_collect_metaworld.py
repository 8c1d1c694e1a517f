"""MetaWorld oracle demonstrations: resumable, every attempt's seed and start recorded, none an
evaluation start."""

import json

import numpy as np
import pytest

pytest.importorskip("metaworld")

from vpp.data.lerobot import LeRobotDataset
from vpp.robots.collect import STATE_FILE, CollectionState, OldCollectionError, collect_metaworld
from vpp.robots.envs.metaworld import MetaWorldTask, configuration_seed
from vpp.robots.evaluate import evaluate_metaworld


def test_collection_resumes_and_writes_a_lerobot_dataset(tmp_path):
    out = tmp_path / "mw"
    collect_metaworld(
        out,
        tasks=["reach"],
        episodes_per_task=1,
        cameras=["corner", "topview"],
        image_size=32,
        progress=False,
    )
    state = collect_metaworld(
        out,
        tasks=["reach", "door-open"],
        episodes_per_task=2,
        cameras=["corner", "topview"],
        image_size=32,
        progress=False,
    )
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
        collect_metaworld(
            out, tasks=["reach"], episodes_per_task=3, cameras=["corner"], image_size=32, progress=False
        )

    assert json.loads((out / "collection_state.json").read_text())["settings"]["cameras"] == [
        "corner",
        "topview",
    ]
    # single-pixel details survive: lossless 4:4:4 video by default
    info = json.loads((out / "meta" / "info.json").read_text())["features"]["observation.images.corner"][
        "info"
    ]
    assert info["video.pix_fmt"] == "yuv444p"


def test_collection_records_configurations_that_evaluation_never_uses(tmp_path):
    out = tmp_path / "mw"
    collect_metaworld(out, tasks=["reach"], episodes_per_task=3, image_size=32, progress=False)
    configurations = CollectionState.read(out).episode_starts()
    assert sorted(configurations) == [0, 1, 2]
    with MetaWorldTask("reach", image_size=32) as env:
        for task, kept in configurations.values():
            env.reset(kept.attempt, "train")
            assert task == "reach" and env.rand_vec.tolist() == kept.start
            assert kept.seed == configuration_seed("reach", "train", kept.attempt)
    evaluated = evaluate_metaworld(
        "oracle", ["reach"], episodes=3, cameras=["corner"], image_size=32, max_steps=1, progress=False
    )
    collected = np.array([kept.start for _, kept in configurations.values()])
    assert len(evaluated["episodes"]) == 3
    for episode in evaluated["episodes"]:
        assert np.abs(collected - np.array(episode["rand_vec"])).max(axis=1).min() > 1e-3


def test_a_killed_writer_commit_is_recorded_once(tmp_path):
    out = tmp_path / "mw"
    collect_metaworld(out, tasks=["reach"], episodes_per_task=2, image_size=32, progress=False)
    # as if killed after the dataset committed episode 1 but before the state recorded it
    saved = json.loads((out / STATE_FILE).read_text())
    last = max(
        (a for a in saved["tasks"]["reach"] if a["episode_index"] is not None), key=lambda a: a["attempt"]
    )
    saved["tasks"]["reach"] = saved["tasks"]["reach"][: last["attempt"]]
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
    old = {
        "config": {k: saved["settings"][k] for k in ("cameras", "image_size", "fps")},
        "tasks": {"reach": {"next_attempt": 1, "kept": 1, "dropped": 0}},
    }
    (out / STATE_FILE).write_text(json.dumps(old))
    with pytest.raises(OldCollectionError, match="old scheme"):
        collect_metaworld(out, tasks=["reach"], episodes_per_task=2, image_size=32, progress=False)
    (out / STATE_FILE).unlink()
    with pytest.raises(OldCollectionError, match=r"no collection_state\.json"):
        collect_metaworld(out, tasks=["reach"], episodes_per_task=2, image_size=32, progress=False)


def test_a_folder_of_the_previous_metaworld_state_format_resumes(tmp_path):
    out = tmp_path / "mw"
    collect_metaworld(out, tasks=["reach"], episodes_per_task=2, image_size=32, progress=False)
    saved = json.loads((out / STATE_FILE).read_text())
    attempts = saved["tasks"]["reach"]
    kept = [
        {"episode_index": a["episode_index"], "attempt": a["attempt"], "rand_vec": a["start"]}
        for a in attempts
        if a["episode_index"] is not None
    ]
    previous = {
        "config": saved["settings"],
        "pending": None,
        "tasks": {
            "reach": {
                "next_attempt": len(attempts),
                "kept": len(kept),
                "dropped": len(attempts) - len(kept),
                "episodes": kept,
            }
        },
    }
    (out / STATE_FILE).write_text(json.dumps(previous))
    state = collect_metaworld(out, tasks=["reach"], episodes_per_task=3, image_size=32, progress=False)
    assert LeRobotDataset(out).num_episodes == 3 and state.tasks["reach"].kept == 3
    assert [a.start for a in state.tasks["reach"].episodes[:2]] == [e["rand_vec"] for e in kept]
    assert [a.seed for a in state.tasks["reach"].attempts] == [
        configuration_seed("reach", "train", k) for k in range(state.tasks["reach"].next_attempt)
    ]
    assert json.loads((out / STATE_FILE).read_text())["format"] == 2
