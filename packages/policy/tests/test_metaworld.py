import json

import numpy as np
import pytest

pytest.importorskip("metaworld")

from vpp.policy.envs.metaworld import MetaWorldTask, configuration_seed
from vpp.policy.envs.metaworld_tasks import ALL_TASKS, GROUPS, INSTRUCTIONS
from vpp.policy.evaluate import evaluate_metaworld, group_scores


def test_task_table_covers_metaworld():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    names = {n.removesuffix("-v3") for n in ALL_V3_ENVIRONMENTS}
    assert set(ALL_TASKS) == names == set(INSTRUCTIONS)
    assert [len(GROUPS[g]) for g in ("easy", "middle", "hard")] == [28, 11, 11]
    assert len(set(INSTRUCTIONS.values())) == 50


def test_rendered_observations_and_oracle_success():
    with MetaWorldTask("reach", cameras=("corner", "topview"), image_size=32) as env:
        obs = env.reset(0, "train")
        assert obs["corner"].shape == (32, 32, 3) and obs["corner"].dtype == np.uint8
        assert obs["state"].shape == (4,)
        assert not np.array_equal(obs["corner"], obs["topview"])
        for _ in range(env.max_steps):
            result = env.step(env.oracle_action())
            if result.done:
                break
        assert result.success
        with pytest.raises(ValueError, match="4 finite values"):
            env.step(np.array([np.nan, 0, 0, 0]))
    with pytest.raises(ValueError, match="unknown MetaWorld task"):
        MetaWorldTask("make-coffee")


def initial_states(task, split, count):
    """rand_vec, full MetaWorld observation and rendered frame at the start of episodes 0..count-1
    (64 px: at 32 px reach's goal can vanish between pixels)."""
    with MetaWorldTask(task, cameras=("corner",), image_size=64) as env:
        starts = []
        for i in range(count):
            obs = env.reset(i, split)
            starts.append((env.rand_vec.copy(), env._last_obs.copy(), obs["corner"]))
    return starts


@pytest.mark.parametrize("task", ["reach", "button-press-topdown", "pick-place"])
def test_evaluation_never_starts_from_a_collected_configuration(task):
    train = initial_states(task, "train", 20)
    evaluation = initial_states(task, "eval", 20)
    for starts in (train, evaluation):
        vecs = np.stack([s[0] for s in starts])
        # configurations vary from episode to episode: every pair differs somewhere by > 1 mm
        gaps = np.abs(vecs[:, None] - vecs[None]).max(axis=-1) + np.eye(len(vecs))
        assert gaps.min() > 1e-3
    for rand_vec, raw, frame in train:
        for other_vec, other_raw, other_frame in evaluation:
            assert np.abs(rand_vec - other_vec).max() > 1e-3
            assert not np.allclose(raw, other_raw, atol=1e-4)
            assert not np.array_equal(frame, other_frame)


def test_configurations_are_reproducible_and_replayable():
    with MetaWorldTask("reach", cameras=("corner",), image_size=64) as env:
        first = env.reset(7, "train")
        rand_vec, raw = env.rand_vec.copy(), env._last_obs.copy()
        env.reset(3, "eval")
        replayed = env.reset_to(rand_vec)
        np.testing.assert_array_equal(env._last_obs, raw)
        np.testing.assert_array_equal(replayed["corner"], first["corner"])
        # the first frame shows the goal where this episode has it (MetaWorld leaves it stale)
        import mujoco

        mujoco.mj_forward(env.env.model, env.env.data)
        np.testing.assert_array_equal(env._render()["corner"], replayed["corner"])
        with pytest.raises(ValueError, match="split 'test'"):
            env.reset(0, "test")
        with pytest.raises(ValueError, match="expected 6 finite values"):
            env.reset_to([0.0, 0.6])
    with MetaWorldTask("reach", cameras=("corner",), image_size=64) as fresh:
        again = fresh.reset(7, "train")
        np.testing.assert_array_equal(fresh.rand_vec, rand_vec)
        np.testing.assert_array_equal(again["corner"], first["corner"])
    # distinct (split, task, index) never share a seed, whatever the index
    assert configuration_seed("reach", "train", 5) != configuration_seed("reach", "eval", 5)
    assert configuration_seed("reach", "train", 5) != configuration_seed("push", "train", 5)
    assert len({configuration_seed(t, "eval", 0) for t in ALL_TASKS}) == len(ALL_TASKS)


class StillPolicy:
    def act(self, observation, instruction):
        assert isinstance(instruction, str) and observation["corner"].shape == (32, 32, 3)
        return np.zeros((5, 4), dtype=np.float32)


def test_evaluation_writes_table_json_and_videos(tmp_path):
    results = evaluate_metaworld("oracle", ["reach"], episodes=2, cameras=["corner"], image_size=32, output=tmp_path / "oracle")
    assert results["per_task"] == {"reach": 1.0}
    still = evaluate_metaworld(StillPolicy(), ["reach"], episodes=1, cameras=["corner"], image_size=32, output=tmp_path / "still", max_steps=20)
    assert still["per_task"] == {"reach": 0.0} and still["mean_episode_length"]["reach"] == 20
    saved = json.loads((tmp_path / "oracle" / "results.json").read_text())
    assert saved["groups"]["easy"] == 1.0 and saved["groups"]["middle"] is None
    assert (tmp_path / "oracle" / "videos" / "reach.mp4").stat().st_size > 0
    assert "VPP (paper, 50 tasks)" in (tmp_path / "oracle" / "results.md").read_text()


def test_group_scores_follow_the_paper_groups():
    scores = group_scores({"reach": 1.0, "door-open": 0.5, "hammer": 0.25, "assembly": 0.0})
    assert scores == {"easy": 0.75, "middle": 0.25, "hard": 0.0, "average": 0.4375}


def test_cli_collects_and_evaluates_the_oracle(tmp_path, capsys):
    from vpp.policy.cli import main

    main(["collect", "--tasks", "reach", "--episodes", "1", "--size", "32", "--out", str(tmp_path / "demos")])
    assert "1 successful oracle episodes kept" in capsys.readouterr().out
    main(["eval", "--policy", "oracle", "--tasks", "reach", "--episodes", "1", "--size", "32", "--out", str(tmp_path / "eval")])
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| MetaWorld oracle (1 tasks)" in table and "1.000" in table
