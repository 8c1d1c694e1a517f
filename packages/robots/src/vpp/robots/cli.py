"""`vpp-robot run`: a policy on a simulated or real arm, with a live rate/latency readout.

Writes into --out: `rollout.mp4` (all cameras side by side), `latency_report.json` (the
ControlLoop report plus the run's settings) and, unless --no-record, `dataset/`, the rollout
as a LeRobotDataset v3 episode.
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
from vpp.robots.interfaces import Camera, Robot
from vpp.robots.policies import BUILT_IN_POLICIES, load_policy
from vpp.robots.safety import SafetyFilter, SafetyLimits

logger = logging.getLogger("vpp.robots.cli")

ROBOTS = ("sim-panda", "sim-xarm", "franka", "xarm")


def build_robot(name: str, host: str | None, servo_rate_hz: float, image_size: int) -> tuple[Robot, list[Camera]]:
    servo_period = 1.0 / servo_rate_hz
    if name in ("sim-panda", "sim-xarm"):
        from vpp.robots.drivers.sim import SimConfig, SimPanda, SimXArm

        arm_class = SimPanda if name == "sim-panda" else SimXArm
        limits = dataclasses.replace(arm_class.default_limits(), control_period_s=servo_period)
        arm = arm_class(SimConfig(image_height=image_size, image_width=image_size), SafetyFilter(limits))
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
    policy = load_policy(args.policy)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    robot, cameras = build_robot(args.robot, args.host, args.servo_rate, args.image_size)
    recorder = RolloutRecorder([camera.name for camera in cameras])
    with robot:
        loop = ControlLoop(robot, cameras, policy, config, recorder=recorder, on_progress=_progress_line)
        report = loop.run(args.instruction, seconds=args.seconds)
    fps = round(args.rate)
    _write_video(recorder, out / "rollout.mp4", fps)
    if args.record and len(recorder):
        recorder.save_episode(out / "dataset", fps=fps, instruction=args.instruction, robot_type=args.robot.replace("-", "_"))
    summary = {
        "robot": args.robot,
        "policy": args.policy,
        "instruction": args.instruction,
        "config": dataclasses.asdict(config),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **report.to_dict(),
    }
    (out / "latency_report.json").write_text(json.dumps(summary, indent=2))
    logger.info("wrote %s", out)
    return 0 if report.stop_reason is None else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vpp-robot", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run a policy on an arm")
    run_parser.add_argument("--robot", choices=ROBOTS, required=True)
    run_parser.add_argument("--policy", required=True, help=f"an artifact folder or a built-in: {', '.join(BUILT_IN_POLICIES)}")
    run_parser.add_argument("--instruction", required=True)
    run_parser.add_argument("--seconds", type=float, default=10.0)
    run_parser.add_argument("--out", default="robot_run")
    run_parser.add_argument("--host", help="controller address (franka, xarm)")
    run_parser.add_argument("--rate", type=float, default=10.0, help="policy rate, Hz")
    run_parser.add_argument("--servo-rate", type=float, default=100.0, help="interpolation/command rate, Hz")
    run_parser.add_argument("--execute-steps", type=int, default=8, help="actions executed per chunk")
    run_parser.add_argument("--ensemble-decay", type=float, default=None, help="ACT temporal ensembling m (off if unset)")
    run_parser.add_argument("--image-size", type=int, default=128, help="simulated camera side, pixels")
    run_parser.add_argument("--no-record", dest="record", action="store_false", help="skip the LeRobot episode")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The filter logs every clamp at INFO, 100 times a second while streaming; the readout is the live view.
    logging.getLogger("vpp.robots.safety").setLevel(logging.WARNING)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
