"""`vpp-robot run`: a policy on a simulated or real arm, with a live rate/latency readout;
`vpp-robot collect`: scripted-expert demonstrations on a simulated arm;
`vpp-robot eval-grasp`: how often a policy grasps the cube on the simulated arm, from unseen cube positions.

`run` writes into --out: `rollout.mp4` (all cameras side by side), `latency_report.json` (the
ControlLoop report, including the achieved policy rate and whether it held the target, plus the
run's settings) and, unless --no-record, `dataset/`, the rollout as a LeRobotDataset v3 episode.
`collect` writes a LeRobotDataset v3 folder of `GraspCubeExpert` episodes (see vpp.robots.collect).
`eval-grasp` writes `grasp_eval.json` and `grasps.mp4` into --out and prints `grasped K/N`
(see vpp.robots.grasp_eval).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from vpp.robots.control_loop import ControlLoop, ControlLoopConfig, ControlLoopReport, RolloutRecorder
from vpp.robots.drivers.sim import SimArm
from vpp.robots.grasp_eval import EVAL_SEED
from vpp.robots.interfaces import Camera, Robot
from vpp.robots.policies import BUILT_IN_POLICIES, load_policy
from vpp.robots.safety import SafetyFilter, SafetyLimits

logger = logging.getLogger("vpp.robots.cli")

SIM_ROBOTS = ("sim-panda", "sim-xarm")
ROBOTS = (*SIM_ROBOTS, "franka", "xarm")
DEFAULT_IMAGE_SIZE = 128


def build_robot(args: argparse.Namespace, image_size: int) -> tuple[Robot, list[Camera]]:
    name, host, servo_rate_hz = args.robot, args.host, args.servo_rate
    servo_period = 1.0 / servo_rate_hz
    if name in SIM_ROBOTS:
        from vpp.robots.drivers.sim import SimConfig, build_sim_arm

        config = SimConfig(
            image_height=image_size,
            image_width=image_size,
            start_tcp_position=None if args.sim_start == "home" else "ready",
            object_jitter_m=args.object_jitter,
            seed=args.sim_seed,
        )
        arm = build_sim_arm(name, config, servo_rate_hz)
        return arm, arm.cameras()
    if host is None:
        raise SystemExit(f"--robot {name} needs --host (the controller's address)")
    if name == "franka":
        from vpp.robots.drivers.franka import FrankaConfig, FrankaRobot

        return FrankaRobot(FrankaConfig(host), SafetyFilter(SafetyLimits.franka_fr3(control_period_s=servo_period))), []
    from vpp.robots.drivers.xarm import XArmConfig, XArmRobot

    return XArmRobot(XArmConfig(host), SafetyFilter(SafetyLimits.xarm7(control_period_s=servo_period))), []


def _progress_line(report: ControlLoopReport) -> None:
    rate = 1000.0 / report.policy_period["mean_ms"] if report.policy_period.get("count") else 0.0
    servo = 1000.0 / report.servo_period["mean_ms"] if report.servo_period.get("count") else 0.0
    inference = report.inference_latency.get("p50_ms", float("nan"))
    logger.info(
        "t=%5.1fs policy %5.1f Hz (jitter p95 %.1f ms) servo %5.1f Hz inference p50 %.0f ms chunks %d missed %d stale %d",
        report.duration_s,
        rate,
        report.policy_jitter.get("p95_ms", float("nan")),
        servo,
        inference,
        report.chunks,
        report.missed_deadlines,
        report.stale_actions_dropped,
    )


def _sim_scene_summary(robot: SimArm, object_start: np.ndarray) -> dict:
    """Where the cube started and is, how far the tool centre point ended from it and whether the
    hand holds it up at the end (simulated arms only: a real arm has no ground truth to report)."""
    final_position = robot.observe().ee_position
    cube = robot.object_position()
    return {
        "object_start": object_start.tolist(),
        "object_position": cube.tolist(),
        "final_tcp_position": final_position.tolist(),
        "final_tcp_to_object_m": float(np.linalg.norm(final_position - cube)),
        "final_object_lift_m": robot.object_lift_m(),
        "grasped_at_end": robot.object_grasped(),
    }


def _write_video(recorder: RolloutRecorder, path: Path, fps: int) -> None:
    from vpp.data.video_io import write_video

    if not recorder.camera_names or not len(recorder):
        logger.warning("no camera frames to write to %s", path)
        return
    frames = np.concatenate([np.stack(recorder.images[name]) for name in recorder.camera_names], axis=2)
    write_video(path, frames, fps=fps)


def run(args: argparse.Namespace) -> int:
    config = ControlLoopConfig(
        policy_rate_hz=args.rate,
        servo_rate_hz=args.servo_rate,
        execute_steps=args.execute_steps,
        temporal_ensemble_decay=args.ensemble_decay,
        replan_when_remaining=None if args.ensemble_decay is not None else 1,
    )
    policy = load_policy(args.policy, threads=args.inference_threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Rendering at the size the artifact resizes to anyway is the cheapest frame that loses nothing.
    image_size = args.image_size or getattr(policy, "image_size", None) or DEFAULT_IMAGE_SIZE
    robot, cameras = build_robot(args, image_size)
    recorder = RolloutRecorder([camera.name for camera in cameras])
    simulated = args.robot in SIM_ROBOTS
    with robot:
        object_start = robot.object_position() if simulated else None
        loop = ControlLoop(robot, cameras, policy, config, recorder=recorder, on_progress=_progress_line)
        report = loop.run(args.instruction, seconds=args.seconds)
        scene = _sim_scene_summary(robot, object_start) if simulated else None
    fps = round(args.rate)
    _write_video(recorder, out / "rollout.mp4", fps)
    if args.record and len(recorder):
        recorder.save_episode(out / "dataset", fps=fps, instruction=args.instruction, robot_type=args.robot.replace("-", "_"))
    summary = {
        "robot": args.robot,
        "policy": args.policy,
        "instruction": args.instruction,
        "config": dataclasses.asdict(config),
        "image_size": image_size,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **report.to_dict(),
    }
    if scene is not None:
        summary["sim_scene"] = scene
    (out / "latency_report.json").write_text(json.dumps(summary, indent=2))
    logger.info("wrote %s", out)
    print(rate_verdict(report))
    return 0 if report.stop_reason is None else 1


def rate_verdict(report: ControlLoopReport) -> str:
    """One line saying whether the loop held its policy rate, and why not."""
    inference = report.inference_latency.get("p50_ms", float("nan"))
    observe = report.observe_latency.get("p50_ms", float("nan"))
    details = (
        f"achieved {report.policy_rate_hz:.2f} Hz over {report.ticks} ticks; {report.overrun_ticks} overrun ticks, "
        f"{report.missed_deadlines} ticks without an action; observe+render p50 {observe:.1f} ms, inference p50 {inference:.1f} ms"
    )
    verdict = "HELD" if report.rate_held else "DID NOT HOLD"
    return f"policy rate {verdict} {report.target_rate_hz:g} Hz: {details}"


def collect(args: argparse.Namespace) -> int:
    from vpp.robots.collect import CollectConfig, collect_sim_demos

    config = CollectConfig(
        robot=args.robot,
        episodes=args.episodes,
        max_seconds=args.max_seconds,
        rate_hz=args.rate,
        servo_rate_hz=args.servo_rate,
        image_size=args.image_size,
        seed=args.seed,
        object_jitter_m=args.object_jitter,
    )
    progress = collect_sim_demos(args.out, config)
    print(f"{args.out}: {progress.kept} expert episodes, {progress.dropped} attempts dropped")
    return 0


def eval_grasp(args: argparse.Namespace) -> int:
    from vpp.robots.grasp_eval import GraspEvalConfig, evaluate_grasps

    policy = load_policy(args.policy, threads=args.inference_threads)
    config = GraspEvalConfig(
        robot=args.robot,
        episodes=args.episodes,
        seed=args.seed,
        max_seconds=args.max_seconds,
        rate_hz=args.rate,
        servo_rate_hz=args.servo_rate,
        execute_steps=args.execute_steps,
        image_size=args.image_size or getattr(policy, "image_size", None) or DEFAULT_IMAGE_SIZE,
        object_jitter_m=args.object_jitter,
    )
    result = evaluate_grasps(policy, args.instruction, config, demos=args.demos, out=args.out)
    seconds = [rollout.wall_s for rollout in result.rollouts]
    print(
        f"{result.summary()} (cube lifted >= {100 * config.lift_m:.0f} cm between the fingers within "
        f"{config.max_seconds:g} s, from cube positions not in the demonstrations; {result.wall_s:.0f} s wall, "
        f"{np.mean(seconds):.1f} s per rollout)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vpp-robot", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run a policy on an arm")
    run_parser.add_argument("--robot", choices=ROBOTS, required=True)
    run_parser.add_argument("--policy", required=True, help=f"an artifact folder, a policy server's ws://host:port, or a built-in: {', '.join(BUILT_IN_POLICIES)}")
    run_parser.add_argument("--instruction", required=True)
    run_parser.add_argument("--seconds", type=float, default=10.0)
    run_parser.add_argument("--out", default="robot_run")
    run_parser.add_argument("--host", help="controller address (franka, xarm)")
    run_parser.add_argument("--rate", type=float, default=10.0, help="policy rate, Hz")
    run_parser.add_argument("--servo-rate", type=float, default=100.0, help="interpolation/command rate, Hz")
    run_parser.add_argument("--execute-steps", type=int, default=8, help="actions executed per chunk")
    run_parser.add_argument("--ensemble-decay", type=float, default=None, help="ACT temporal ensembling m (off if unset)")
    run_parser.add_argument(
        "--image-size", type=int, default=None, help=f"simulated camera side, pixels (default: the artifact's image size, else {DEFAULT_IMAGE_SIZE})"
    )
    run_parser.add_argument(
        "--inference-threads",
        type=int,
        default=None,
        help="ONNX Runtime threads for an artifact (default: one per core; 1 leaves a core to a simulator)",
    )
    run_parser.add_argument("--no-record", dest="record", action="store_false", help="skip the LeRobot episode")
    # Defaults match `collect`, so that a policy trained on its demonstrations starts in their scene.
    run_parser.add_argument("--sim-start", choices=("ready", "home"), default="ready", help="simulated arm's start pose")
    run_parser.add_argument("--sim-seed", type=int, default=EVAL_SEED, help="cube spawn seed (collect uses seeds from 0)")
    run_parser.add_argument("--object-jitter", type=float, default=0.1, help="cube spawn range, +-metres on x and y")
    run_parser.set_defaults(func=run)
    collect_parser = commands.add_parser(
        "collect", help="scripted-expert demonstrations on a simulated arm -> LeRobotDataset v3 (resumable)"
    )
    # The expert's grasp (closing threshold, cube size) is tuned to the Panda hand only.
    collect_parser.add_argument("--robot", choices=("sim-panda",), default="sim-panda")
    collect_parser.add_argument("--episodes", type=int, default=8, help="episodes the dataset should hold")
    collect_parser.add_argument("--out", required=True, help="dataset folder (extended if it exists)")
    collect_parser.add_argument("--max-seconds", type=float, default=15.0, help="cap on an episode (it ends when the cube is grasped)")
    collect_parser.add_argument("--rate", type=float, default=10.0, help="policy (and recording) rate, Hz")
    collect_parser.add_argument("--servo-rate", type=float, default=100.0, help="interpolation/command rate, Hz")
    collect_parser.add_argument("--image-size", type=int, default=32, help="camera side, pixels")
    collect_parser.add_argument("--seed", type=int, default=0, help="attempt k spawns the cube from seed + k")
    collect_parser.add_argument("--object-jitter", type=float, default=0.1, help="cube spawn range, +-metres on x and y")
    collect_parser.set_defaults(func=collect)
    eval_parser = commands.add_parser(
        "eval-grasp", help="grasp success of a policy on the simulated arm, from cube positions not in the demonstrations"
    )
    eval_parser.add_argument("--robot", choices=("sim-panda",), default="sim-panda")
    eval_parser.add_argument("--policy", required=True, help=f"an artifact folder, a policy server's ws://host:port, or a built-in: {', '.join(BUILT_IN_POLICIES)}")
    eval_parser.add_argument("--instruction", required=True)
    eval_parser.add_argument("--episodes", type=int, default=10, help="rollouts")
    eval_parser.add_argument("--seed", type=int, default=EVAL_SEED, help="rollout k spawns the cube from seed + k")
    eval_parser.add_argument("--demos", help="the demonstrations' folder: refuse seeds or cube starts it was collected from")
    eval_parser.add_argument("--out", default="grasp_eval")
    eval_parser.add_argument("--max-seconds", type=float, default=15.0, help="simulated seconds per rollout")
    eval_parser.add_argument("--rate", type=float, default=10.0, help="policy rate, Hz")
    eval_parser.add_argument("--servo-rate", type=float, default=100.0, help="interpolation/command rate, Hz")
    eval_parser.add_argument("--execute-steps", type=int, default=8, help="actions executed per chunk")
    eval_parser.add_argument("--image-size", type=int, default=None, help="simulated camera side, pixels (default: the artifact's)")
    eval_parser.add_argument("--object-jitter", type=float, default=0.1, help="cube spawn range, +-metres on x and y")
    eval_parser.add_argument("--inference-threads", type=int, default=None, help="ONNX Runtime threads for an artifact")
    eval_parser.set_defaults(func=eval_grasp)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The filter logs every clamp at INFO, 100 times a second while streaming; the readout is the live view.
    logging.getLogger("vpp.robots.safety").setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
