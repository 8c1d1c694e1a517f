"""``vpp-policy``: train, predict, diagnose. Demonstrations are collected and policies evaluated in
simulation by ``vpp-robot collect`` and ``vpp-robot eval`` (vpp-robots)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

logger = logging.getLogger("vpp.policy")


def cmd_diagnose(args) -> None:
    import json
    from pathlib import Path

    from vpp.policy.data import LeRobotEpisodeSource
    from vpp.policy.diagnostics import image_sensitivity, offline_action_error, split_by_task
    from vpp.policy.policy import VideoPredictionPolicy

    policy = VideoPredictionPolicy.from_pretrained(args.policy).eval()
    config = policy.config
    source = LeRobotEpisodeSource(
        args.data, state_key=None if config.state_dim is None else "observation.state"
    )
    train, held_out = split_by_task(
        [source.episode(i) for i in range(len(source))], args.train_episodes_per_task, args.held_out_per_task
    )
    settings = {"samples": args.samples, "stride": args.stride, "seed": args.seed, "progress": True}
    results = {
        "policy": args.policy,
        "data": args.data,
        "train_episodes_per_task": args.train_episodes_per_task,
        "offline_action_error": offline_action_error(
            policy, train, held_out, config.cameras, config.chunk, **settings
        ),
        "image_sensitivity": image_sensitivity(policy, held_out, config.cameras, config.chunk, **settings),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnostics.json").write_text(json.dumps(results, indent=2) + "\n")
    mse, eyes = results["offline_action_error"]["action_chunk_mse"], results["image_sensitivity"]
    print(
        f"action chunk MSE: policy mean {mse['policy_mean']:.4f} (one sample {mse['policy_single_sample']:.4f}), "
        f"task mean chunk {mse['task_mean_chunk']:.4f}"
    )
    print(
        f"image ratio {eyes['image_ratio']}, state ratio {eyes['state_ratio']} (oracle shift "
        f"{eyes['oracle_shift']:.4f})"
    )
    print(f"written to {out / 'diagnostics.json'}")


def load_tvp(args):
    import torch

    from vpp.tvp.model import TextGuidedVideoPredictor

    if args.tvp:
        tvp = TextGuidedVideoPredictor.from_pretrained(args.tvp)
    else:
        torch.manual_seed(args.seed)
        logger.warning("no --tvp given: using an untrained %r TVP (smoke runs only)", args.tvp_preset)
        tvp = TextGuidedVideoPredictor.from_preset(args.tvp_preset)
    blocks = getattr(args, "feature_blocks", None)
    if blocks is not None:
        # checked against the UNet's up-blocks by TVPConfig; saved with the policy, so the export
        # traces only these blocks (the official early exit: blocks 0 and 1)
        tvp.config = dataclasses.replace(
            tvp.config, features=dataclasses.replace(tvp.config.features, blocks=blocks)
        )
        logger.info("predictive features from up-blocks %s of %d", blocks, tvp.config.num_up_blocks)
    frames = getattr(args, "feature_frames", None)
    if frames is not None:
        # checked against the TVP's clip length by TVPConfig; saved with the policy like the blocks
        tvp.config = dataclasses.replace(
            tvp.config, features=dataclasses.replace(tvp.config.features, frames=frames)
        )
        logger.info("feature pass over %d of the TVP's %d frames", frames, tvp.config.num_frames)
    return tvp


def feature_blocks(text: str) -> tuple[int, ...]:
    """``--feature-blocks 0,1`` -> (0, 1)."""
    try:
        blocks = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}; expected up-block indices such as 0,1") from None
    if len(set(blocks)) != len(blocks) or list(blocks) != sorted(blocks):
        raise argparse.ArgumentTypeError(f"{text!r}; expected increasing, distinct up-block indices")
    return blocks


def keep_every_kth_window(windows, k: int) -> None:
    """Keeps the windows at timesteps 0, k, 2k, ... of every episode: neighbouring windows are
    nearly the same sample, and on a CPU the TVP forward of each cached window is what costs."""
    if k < 1:
        raise ValueError(f"--window-stride {k}; expected a positive integer")
    windows.windows = [(e, t) for e, t in windows.windows if t % k == 0]


def keep_first_episodes_per_task(windows, n: int) -> None:
    """Keeps the windows of the first ``n`` episodes of every task (the dataset's task index, so
    two tasks whose instructions read the same are still counted apart)."""
    if n < 1:
        raise ValueError(f"--episodes-per-task {n}; expected a positive integer")
    seen: dict[str, int] = {}
    kept = set()
    for e, episode in enumerate(windows.episodes):
        seen[episode.task] = seen.get(episode.task, 0) + 1
        if seen[episode.task] <= n:
            kept.add(e)
    windows.windows = [(e, t) for e, t in windows.windows if e in kept]


def cmd_train(args) -> None:
    import torch

    from vpp.data.config import config_from_arguments
    from vpp.policy.config import PolicyTrainConfig, VPPConfig
    from vpp.policy.data import LeRobotEpisodeSource, PolicyWindowDataset
    from vpp.policy.feature_cache import FeatureCache
    from vpp.policy.policy import VideoPredictionPolicy
    from vpp.policy.train import PolicyTrainer

    # checked before any model or data is loaded: a bad value fails at once
    train_config = config_from_arguments(PolicyTrainConfig, args)
    tvp = load_tvp(args)
    sources = [
        LeRobotEpisodeSource(path, state_key=None if args.no_state else "observation.state")
        for path in args.data
    ]
    probe = sources[0].episode(0)
    state_dim = None if args.no_state or probe.state is None else probe.state.shape[1]
    cameras = args.camera or ["corner"]
    windows = PolicyWindowDataset(
        sources, cameras, chunk=args.chunk, image_size=tvp.config.image_size, state_dim=state_dim
    )
    logger.info("%s", windows.report.summary())
    if args.episodes_per_task is not None:
        keep_first_episodes_per_task(windows, args.episodes_per_task)
    keep_every_kth_window(windows, args.window_stride)
    logger.info(
        "%d training windows (every %d-th timestep, episodes per task: %s)",
        len(windows),
        args.window_stride,
        args.episodes_per_task or "all",
    )
    config = config_from_arguments(
        VPPConfig,
        args,
        cameras=cameras,
        action_dim=probe.actions.shape[1],
        state_dim=state_dim,
        feature_noise="fixed" if args.feature_cache else "random",
        feature_seed=train_config.seed,
        state_dropout=args.state_dropout if state_dim is not None else 0.0,
    )
    policy = VideoPredictionPolicy.build(
        tvp, config, windows.all_actions(), windows.all_states(), head_preset=args.head_preset, seed=args.seed
    )
    # dropout draws from the global RNG: seeded too, so two runs with one seed train alike
    torch.manual_seed(args.seed)
    cache = None
    if args.feature_cache:
        cache = FeatureCache(args.feature_cache, tvp, cameras, seed=args.seed, encoder=args.encoder)
        cache.build(windows, tvp)
    if args.standardize_features:
        # a resumed run loads the statistics with its checkpoint: these are the same numbers
        policy.fit_feature_statistics(windows, cache, seed=args.seed)
    PolicyTrainer(policy, windows, train_config, cache).train()


def cmd_convert(args) -> None:
    from vpp.policy.policy import convert_legacy_policy

    print(convert_legacy_policy(args.old, args.new))


def cmd_predict(args) -> None:
    import json

    import imageio.v3 as iio
    import numpy as np

    from vpp.policy.policy import VideoPredictionPolicy

    policy = VideoPredictionPolicy.from_pretrained(args.policy).eval()
    observation = {}
    for item in args.image:
        camera, _, path = item.partition("=")
        observation[camera] = np.asarray(iio.imread(path))[..., :3]
    if args.state:
        observation["state"] = np.array([float(v) for v in args.state.split(",")], dtype=np.float32)
    actions = policy.predict_action_chunk(observation, args.instruction)
    print(json.dumps({"instruction": args.instruction, "actions": actions.tolist()}))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from vpp.data.config import add_config_arguments
    from vpp.policy.config import PolicyHeadConfig, PolicyTrainConfig, VPPConfig
    from vpp.tvp.config import TVPConfig

    parser = argparse.ArgumentParser(prog="vpp-policy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    diagnose = sub.add_parser(
        "diagnose",
        help="offline action error and image sensitivity of a policy on held-out demonstrations -> JSON",
    )
    diagnose.add_argument("--policy", required=True, help="a saved policy folder")
    diagnose.add_argument(
        "--data", required=True, help="the LeRobotDataset v3 folder the policy was trained on"
    )
    diagnose.add_argument(
        "--train-episodes-per-task",
        type=int,
        default=10,
        help="the first N episodes of each task are the training set (train's --episodes-per-task); "
        "the next are held out",
    )
    diagnose.add_argument("--held-out-per-task", type=int, default=5)
    diagnose.add_argument("--samples", type=int, default=4, help="action chunks sampled per window")
    diagnose.add_argument("--stride", type=int, default=16, help="measure every k-th timestep")
    diagnose.add_argument("--seed", type=int, default=0)
    diagnose.add_argument("--out", required=True, help="folder for diagnostics.json")
    diagnose.set_defaults(func=cmd_diagnose)

    train = sub.add_parser(
        "train", help="train the policy head on LeRobot episodes with a frozen TVP (resumable)"
    )
    train.add_argument("--data", action="append", required=True, help="LeRobotDataset v3 folder (repeatable)")
    train.add_argument("--tvp", help="trained TVP folder (vpp-tvp train's run/model)")
    train.add_argument(
        "--tvp-preset",
        default="tiny",
        choices=TVPConfig.preset_names(),
        help="untrained TVP when --tvp is absent",
    )
    train.add_argument(
        "--feature-blocks",
        type=feature_blocks,
        default=None,
        help="the TVP up-blocks the predictive features stack, e.g. 0,1: the official code's early exit, which "
        "also stops the UNet after the last of them (about a third less work per act); default: the TVP's own "
        "setting (every up-block, as in the paper)",
    )
    train.add_argument(
        "--feature-frames",
        type=int,
        default=None,
        help="frames of the feature pass (at most the TVP's clip length): the UNet's work per act is linear in "
        "it, and the head reads this many predicted frames; default: the TVP's own setting (its clip length)",
    )
    train.add_argument(
        "--camera", action="append", default=None, help="camera name (repeatable; default: corner)"
    )
    train.add_argument("--no-state", action="store_true", help="do not use observation.state")
    train.add_argument("--head-preset", default="small", choices=PolicyHeadConfig.preset_names())
    train.add_argument(
        "--feature-cache",
        help="folder for encoder features computed once (TVP: from the policy's one fixed noise "
        "draw; VAE: its latents)",
    )
    train.add_argument(
        "--episodes-per-task",
        type=int,
        default=None,
        help="train on the first N episodes of each instruction only",
    )
    train.add_argument(
        "--window-stride",
        type=int,
        default=1,
        help="train on the windows at every k-th timestep only (both encoders)",
    )
    # The policy's and the run's config fields are options, but for those given otherwise: --camera
    # names the cameras, the data give the action and state sizes, --feature-cache picks the feature
    # noise and --seed seeds it.
    add_config_arguments(
        train,
        VPPConfig,
        exclude=["cameras", "action_dim", "state_dim", "feature_noise", "feature_seed"],
        defaults={"chunk": 10, "standardize_features": True},
    )
    add_config_arguments(
        train,
        PolicyTrainConfig,
        aliases={"output_dir": "--output", "max_steps": "--steps", "learning_rate": "--lr"},
    )
    train.set_defaults(func=cmd_train)

    convert = sub.add_parser(
        "convert",
        help="rewrite a policy folder of the old five-file layout as config.json + model.safetensors",
    )
    convert.add_argument(
        "old", help="policy folder with vpp_policy.json, policy_head.json, head.safetensors, tvp/"
    )
    convert.add_argument("new", help="folder to write")
    convert.set_defaults(func=cmd_convert)

    predict = sub.add_parser("predict", help="one action chunk for one observation")
    predict.add_argument("--policy", required=True)
    predict.add_argument("--image", action="append", required=True, help="CAMERA=PATH (repeatable)")
    predict.add_argument("--state", help="comma-separated proprioception values")
    predict.add_argument("--instruction", required=True)
    predict.set_defaults(func=cmd_predict)

    args = parser.parse_args(argv)
    if getattr(args, "camera", None) is None and hasattr(args, "camera"):
        args.camera = ["corner"]
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
