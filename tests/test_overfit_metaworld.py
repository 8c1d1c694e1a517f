"""The learning and control path end to end, on the one configuration it was trained on.

One oracle demonstration is collected, a tiny policy is overfit to it through the real collector,
window dataset, feature cache and trainer, and the saved policy is run closed-loop from the
demonstration's own initial configuration. This evaluates on a training state on purpose: it
shows that what the trainer fits is what the controller executes (frames, state, normalisation,
chunking, saving and loading all line up), not that the policy generalises.
"""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("metaworld")

from vpp.policy.data import LeRobotEpisodeSource, PolicyWindowDataset
from vpp.policy.feature_cache import FeatureCache
from vpp.policy.policy import VideoPredictionPolicy, VPPConfig
from vpp.policy.train import PolicyTrainConfig, PolicyTrainer
from vpp.robots.collect import CollectionState, collect_metaworld
from vpp.robots.evaluate import evaluate_metaworld
from vpp.tvp.model import TextGuidedVideoPredictor

# button-press-topdown, not reach: from reach's configuration 0 even the demonstration's mean
# action, held constant, reaches the goal, and so did a policy trained for one step in 2 of 3 rollouts.
TASK = "button-press-topdown"
CHUNK = 4


class ConstantAction:
    def __init__(self, action):
        self.action = action

    def act(self, observation, instruction):
        return self.action[None]


def closed_loop(policy, seed=0):
    """One rollout from configuration 0 of the train split: the demonstration's own."""
    torch.manual_seed(seed)
    result = evaluate_metaworld(
        policy,
        [TASK],
        episodes=1,
        cameras=["corner"],
        image_size=64,
        split="train",
        max_steps=150,
        progress=False,
    )
    return result["episodes"][0]


@pytest.mark.slow
def test_one_demonstration_overfit_and_replayed_from_its_training_configuration_succeeds(tmp_path):
    demos = tmp_path / "demos"
    collect_metaworld(demos, tasks=[TASK], episodes_per_task=1, image_size=64, progress=False)
    [(task, demo)] = CollectionState.read(demos).episode_starts().values()
    assert task == TASK and demo.attempt == 0

    windows = PolicyWindowDataset(
        [LeRobotEpisodeSource(demos)], ["corner"], chunk=CHUNK, image_size=32, state_dim=4
    )
    torch.manual_seed(0)
    tvp = TextGuidedVideoPredictor.from_preset("tiny")
    # as `vpp-policy train` builds it: fixed feature noise (the cache's), standardised features
    config = VPPConfig(
        cameras=["corner"],
        action_dim=4,
        chunk=CHUNK,
        state_dim=4,
        feature_noise="fixed",
        standardize_features=True,
    )
    policy = VideoPredictionPolicy.build(
        tvp, config, windows.all_actions(), windows.all_states(), head_preset="tiny"
    )

    # neither the untrained policy nor the demonstration's mean action presses the button
    untrained = closed_loop(policy.eval())
    assert untrained["rand_vec"] == demo.start and not untrained["success"]
    assert not closed_loop(ConstantAction(windows.all_actions().mean(axis=0)))["success"]

    cache = FeatureCache(tmp_path / "features", tvp, ["corner"], seed=0)
    cache.build(windows, tvp, progress=False)
    policy.fit_feature_statistics(windows, cache, progress=False)
    train_config = PolicyTrainConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=600,
        batch_size=32,
        learning_rate=3e-3,
        lr_schedule="constant",
        ema_decay=0.0,
        checkpoint_every=10_000,
        log_every=20,
    )
    PolicyTrainer(policy.train(), windows, train_config, cache).train()
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert np.mean(losses[-5:]) < 0.4 * np.mean(losses[:5])

    trained = VideoPredictionPolicy.from_pretrained(tmp_path / "run" / "model").eval()
    # three rollouts, each with its own action-sampling noise: here every rollout of two trained
    # seeds pressed the button in 60-85 of the 150 steps, but on a CI machine the one rollout this
    # test used to run missed once (not reproduced here), so one miss in three is allowed
    replays = [closed_loop(trained, seed) for seed in range(3)]
    assert all(replay["rand_vec"] == demo.start for replay in replays)
    pressed = [replay["steps"] for replay in replays if replay["success"]]
    assert len(pressed) >= 2, (
        f"the overfit policy pressed the button in {len(pressed)} of 3 rollouts: {replays}"
    )
