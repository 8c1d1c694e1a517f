import json

import numpy as np
import pytest

pytest.importorskip("metaworld")

from vpp.robots.envs.metaworld import MetaWorldTask, configuration_seed
from vpp.robots.envs.metaworld_tasks import ALL_TASKS, GROUPS, INSTRUCTIONS, select_tasks
from vpp.robots.evaluate import evaluate_metaworld, group_scores, wilson_interval


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
    def __init__(self):
        self.calls = 0

    def act(self, observation, instruction):
        assert isinstance(instruction, str) and observation["corner"].shape == (32, 32, 3)
        self.calls += 1
        return np.zeros((5, 4), dtype=np.float32)


def test_evaluation_writes_table_json_and_videos(tmp_path):
    results = evaluate_metaworld(
        "oracle",
        ["reach"],
        episodes=2,
        cameras=["corner"],
        image_size=32,
        output=tmp_path / "oracle",
        videos_per_task=2,
    )
    assert results["per_task"]["reach"]["success"] == 1.0 and results["per_task"]["reach"]["episodes"] == 2
    still = evaluate_metaworld(
        StillPolicy(),
        ["reach"],
        episodes=1,
        cameras=["corner"],
        image_size=32,
        output=tmp_path / "still",
        max_steps=20,
    )
    assert (
        still["per_task"]["reach"]["success"] == 0.0
        and still["per_task"]["reach"]["mean_episode_length"] == 20
    )
    saved = json.loads((tmp_path / "oracle" / "results.json").read_text())
    assert saved["easy"]["success"] == 1.0 and saved["easy"]["ci95"] == pytest.approx([0.342, 1.0], abs=1e-3)
    assert saved["middle"] is None and saved["average"]["tasks"] == 1 and saved["split"] == "eval"
    assert [len(e["rand_vec"]) for e in saved["episodes"]] == [6, 6]
    assert (tmp_path / "oracle" / "videos" / "reach.mp4").stat().st_size > 0
    assert (tmp_path / "oracle" / "videos" / "reach-1.mp4").stat().st_size > 0
    table = (tmp_path / "oracle" / "results.md").read_text()
    assert "VPP (paper, 50 tasks)" in table and "| vpp (1 tasks)" in table and "1.000 [0.34, 1.00]" in table


def evaluate_reach(policy, out, episodes):
    """Short evaluation runs on reach (10 steps each) into the same output folder."""
    return evaluate_metaworld(
        policy,
        ["reach"],
        episodes=episodes,
        cameras=["corner"],
        image_size=32,
        output=out,
        max_steps=10,
        progress=False,
    )


def test_evaluation_resumes_and_skips_finished_episodes(tmp_path):
    out = tmp_path / "still"
    first = StillPolicy()
    evaluate_reach(first, out, episodes=2)
    assert first.calls == 4  # two 5-action chunks per 10-step episode
    # a run killed while writing a line leaves it half-written; the resumed run ignores it
    with (out / "episodes.jsonl").open("a") as f:
        f.write('{"task": "reach", "ind')
    lines = (out / "episodes.jsonl").read_text().splitlines()
    (out / "episodes.jsonl").write_text("\n".join(lines[:1] + lines[2:]))
    resumed = StillPolicy()
    results = evaluate_reach(resumed, out, episodes=3)
    assert resumed.calls == 4  # episodes 1 and 2 only
    assert [e["index"] for e in results["episodes"]] == [0, 1, 2] and results["per_task"]["reach"][
        "episodes"
    ] == 3
    again = StillPolicy()
    evaluate_reach(again, out, episodes=3)
    assert again.calls == 0 and len((out / "episodes.jsonl").read_text().splitlines()) == 3
    with pytest.raises(ValueError, match="holds an evaluation with"):
        evaluate_metaworld(
            StillPolicy(), ["reach"], episodes=3, cameras=["corner"], image_size=32, output=out, max_steps=20
        )


def test_wilson_intervals():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    with pytest.raises(ValueError, match="11 successes in 10 episodes"):
        wilson_interval(11, 10)


def test_group_scores_follow_the_paper_groups_and_pool_episodes():
    scores = group_scores({"reach": (10, 10), "door-open": (5, 10), "hammer": (2, 8), "assembly": (0, 8)})
    assert scores["easy"]["success"] == 0.75 and scores["easy"]["ci95"] == pytest.approx(
        wilson_interval(15, 20)
    )
    assert scores["middle"]["success"] == 0.25 and scores["hard"]["tasks"] == 1
    assert scores["average"] == {
        "success": 17 / 36,
        "successes": 17,
        "episodes": 36,
        "ci95": list(wilson_interval(17, 36)),
        "tasks": 4,
    }


def test_task_selection_by_benchmark_group_or_names():
    assert select_tasks("mt50") == list(ALL_TASKS) and select_tasks("hard") == list(GROUPS["hard"])
    assert select_tasks("reach, push,") == ["reach", "push"]


def test_cli_collects_and_evaluates_the_oracle(tmp_path, capsys):
    from vpp.robots.cli import main

    assert (
        main(
            [
                "collect",
                "metaworld",
                "--tasks",
                "reach",
                "--episodes",
                "1",
                "--image-size",
                "32",
                "--out",
                str(tmp_path / "demos"),
            ]
        )
        == 0
    )
    assert "1 expert episodes kept, 0 unsuccessful attempts dropped" in capsys.readouterr().out
    assert (
        main(
            [
                "eval",
                "metaworld",
                "--policy",
                "oracle",
                "--tasks",
                "reach",
                "--episodes",
                "1",
                "--image-size",
                "32",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| MetaWorld oracle (1 tasks)" in table and "1.000" in table
