"""`vpp-robot run`: a policy on a simulated or real arm, with a live rate/latency readout;
`vpp-robot collect metaworld|grasp`: scripted-expert demonstrations in simulation; `collect replay`:
a LeRobot dataset's actions replayed on a real arm while its cameras are recorded;
`vpp-robot eval metaworld|grasp`: a torch policy or an exported artifact on MetaWorld tasks or on
the simulated arm's cube grasp, from starts no demonstration used.

`run` writes into --out: `rollout.mp4` (all cameras side by side), `latency_report.json` (the
ControlLoop report, including the achieved policy rate and whether it held the target, plus the
run's settings) and, unless --no-record, `dataset/`, the rollout as a LeRobotDataset v3 episode.
`collect` writes a LeRobotDataset v3 folder of MetaWorld oracle, `GraspCubeExpert` or replayed
episodes (see vpp.robots.collect and vpp.robots.replay). `eval metaworld` writes results.json,
results.md (the paper's Table 2 layout), episodes.jsonl and rollout videos into --out; `eval grasp`
writes `grasp_eval.json` and `grasps.mp4` and prints `grasped K/N` (see vpp.robots.evaluate).

Real arms (franka, xarm) see through real cameras bound with `--camera NAME=SPEC` (see
vpp.robots.cameras); simulated arms render their own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vpp.robots.cameras import (
    CameraConfigError,
    CameraError,
    GrabberCamera,
    check_resolution,
    open_camera,
    parse_camera_binding,
)
from vpp.robots.control_loop import ControlLoop, ControlLoopConfig, ControlLoopReport, RolloutRecorder
from vpp.robots.drivers.sim import CAMERA_NAMES, SimArm
from vpp.robots.evaluate import EVAL_SEED
from vpp.robots.interfaces import Camera, Robot, RobotError
from vpp.robots.policies import BLIND_MODES, BUILT_IN_POLICIES, load_policy
from vpp.robots.safety import SafetyFilter

logger = logging.getLogger("vpp.robots.cli")

SIM_ROBOTS = ("sim-panda", "sim-xarm")
ROBOTS = (*SIM_ROBOTS, "franka", "xarm")
DEFAULT_IMAGE_SIZE = 128


def build_robot(args: argparse.Namespace, image_size: int) -> tuple[Robot, list[Camera]]:
    """The arm `args.robot` names, not yet connected, and a simulated arm's own cameras (rendered at
    `image_size`); a real arm's cameras are bound by --camera (`bind_cameras`)."""
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

        franka = FrankaConfig(host, enforce_realtime=args.enforce_realtime)
        return FrankaRobot(franka, SafetyFilter.for_arm("franka", servo_period)), []
    from vpp.robots.drivers.xarm import XArmConfig, XArmRobot

    xarm = XArmConfig(host, report_timeout_s=args.report_timeout)
    return XArmRobot(xarm, SafetyFilter.for_arm("xarm", servo_period)), []


def policy_cameras(policy) -> list[str] | None:
    """The camera names a policy reads: an artifact's or a policy server's `cameras`, a torch
    policy's `config.cameras`; None for a policy that names none (the built-ins)."""
    cameras = getattr(policy, "cameras", None)
    if cameras is None:
        cameras = getattr(getattr(policy, "config", None), "cameras", None)
    return None if cameras is None else list(cameras)


def policy_image_size(policy) -> int | None:
    """The side of the square images a policy resizes its cameras to, where it says."""
    size = getattr(policy, "image_size", None)
    if size is None:
        size = getattr(getattr(getattr(policy, "tvp", None), "config", None), "image_size", None)
    return None if size is None else int(size)


class CameraBindingError(CameraConfigError):
    """--camera flags that do not match the robot or the policy's camera names."""


def bind_cameras(
    robot: str, specs: Sequence[str], needed: Sequence[str] | None, image_size: int
) -> list[GrabberCamera]:
    """Opens the real cameras of `--camera NAME=SPEC` flags for `robot`, checked against the
    policy's camera names `needed` (None: a policy that names none, such as the built-ins, whose
    cameras are recorded only), each serving `image_size`-pixel square frames. Everything is
    checked here, before any arm connects: names missing or unknown to the policy, devices that are
    not there, resolutions too small for `image_size`. A simulated arm renders its own cameras, so
    --camera is refused for it."""
    if robot in SIM_ROBOTS:
        if specs:
            raise CameraBindingError(
                f"--robot {robot} renders its own cameras {list(CAMERA_NAMES)} at --image-size; "
                "--camera binds real cameras for --robot franka or xarm: drop the --camera flags"
            )
        return []
    bindings = [parse_camera_binding(spec) for spec in specs]
    names = [binding.name for binding in bindings]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CameraBindingError(f"--camera binds {repeated} more than once; expected one --camera per name")
    if needed is not None:
        example = "--camera NAME=realsense:SERIAL or --camera NAME=opencv:0"
        unknown = [name for name in names if name not in needed]
        if unknown:
            raise CameraBindingError(
                f"--camera {unknown[0]}=...: the policy has no camera {unknown[0]!r}; its cameras are "
                f"{list(needed)}: bind those names"
            )
        missing = [name for name in needed if name not in names]
        if missing:
            flags = " ".join(f"--camera {name}=..." for name in missing)
            raise CameraBindingError(
                f"the policy needs cameras {list(needed)}, and {missing} {'is' if len(missing) == 1 else 'are'} "
                f"not bound: add {flags} ({example.replace('NAME', missing[0])})"
            )
    cameras: list[GrabberCamera] = []
    try:
        for binding in bindings:
            camera = open_camera(binding, output_size=image_size)
            cameras.append(camera)
            check_resolution(binding.name, binding.spec, camera.resolution, image_size)
            logger.info(
                "camera %r: %s at %dx%d, served as %d px squares",
                binding.name,
                binding.spec,
                *camera.resolution,
                image_size,
            )
    except BaseException:
        for camera in cameras:
            camera.close()
        raise
    return cameras


def _progress_line(report: ControlLoopReport) -> None:
    rate = 1000.0 / report.policy_period["mean_ms"] if report.policy_period.get("count") else 0.0
    servo = 1000.0 / report.servo_period["mean_ms"] if report.servo_period.get("count") else 0.0
    inference = report.inference_latency.get("p50_ms", float("nan"))
    logger.info(
        "t=%5.1fs policy %5.1f Hz (jitter p95 %.1f ms) servo %5.1f Hz "
        "inference p50 %.0f ms chunks %d missed %d stale %d",
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
    # Rendering (or cutting a real camera's frames) at the size the artifact resizes to anyway is the
    # cheapest frame that loses nothing.
    image_size = args.image_size or policy_image_size(policy) or DEFAULT_IMAGE_SIZE
    needed = policy_cameras(policy)
    simulated = args.robot in SIM_ROBOTS
    with contextlib.ExitStack() as stack:
        # Cameras open, and are checked against the policy, before the arm connects.
        real_cameras = bind_cameras(args.robot, args.camera or [], needed, image_size)
        for camera in real_cameras:
            stack.callback(camera.close)
        if not simulated and needed is None and not real_cameras:
            logger.warning("no --camera bound: the policy sees no images and nothing is filmed")
        robot, sim_cameras = build_robot(args, image_size)
        cameras = sim_cameras + real_cameras
        out.mkdir(parents=True, exist_ok=True)
        recorder = RolloutRecorder([camera.name for camera in cameras])
        with robot:
            object_start = robot.object_position() if simulated else None
            loop = ControlLoop(robot, cameras, policy, config, recorder=recorder, on_progress=_progress_line)
            report = loop.run(args.instruction, seconds=args.seconds)
            scene = _sim_scene_summary(robot, object_start) if simulated else None
    fps = round(args.rate)
    _write_video(recorder, out / "rollout.mp4", fps)
    if args.record and len(recorder):
        recorder.save_episode(
            out / "dataset", fps=fps, instruction=args.instruction, robot_type=args.robot.replace("-", "_")
        )
    summary = {
        "robot": args.robot,
        "policy": args.policy,
        "instruction": args.instruction,
        "config": dataclasses.asdict(config),
        "image_size": image_size,
        "cameras": {spec.partition("=")[0]: spec.partition("=")[2] for spec in args.camera or []},
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
        f"{report.missed_deadlines} ticks without an action; observe+render p50 {observe:.1f} ms, "
        f"inference p50 {inference:.1f} ms"
    )
    verdict = "HELD" if report.rate_held else "DID NOT HOLD"
    return f"policy rate {verdict} {report.target_rate_hz:g} Hz: {details}"


def _report_collection(args: argparse.Namespace, state, tasks: list[str], episodes: int) -> int:
    kept = sum(p.kept for p in state.tasks.values())
    dropped = sum(p.dropped for p in state.tasks.values())
    print(f"{args.out}: {kept} expert episodes kept, {dropped} unsuccessful attempts dropped")
    short = state.short_tasks(tasks, episodes)
    if short:
        print(f"ran out of attempts short of {episodes} episodes: {short}", file=sys.stderr)
        return 1
    return 0


def collect_metaworld(args: argparse.Namespace) -> int:
    from vpp.robots.collect import collect_metaworld as collect
    from vpp.robots.envs.metaworld import check_task
    from vpp.robots.envs.metaworld_tasks import select_tasks

    tasks = [check_task(task) for task in select_tasks(args.tasks)]
    state = collect(
        args.out, tasks, args.episodes, args.camera or ["corner"], args.image_size, video=args.video
    )
    return _report_collection(args, state, tasks, args.episodes)


def collect_grasp(args: argparse.Namespace) -> int:
    from vpp.robots.collect import GRASP_TASK, CollectConfig, collect_sim_demos

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
    state = collect_sim_demos(args.out, config)
    return _report_collection(args, state, [GRASP_TASK], args.episodes)


def collect_replay(args: argparse.Namespace) -> int:
    """Replays a LeRobot dataset's episodes on a real arm while recording its cameras (see
    vpp.robots.replay); everything is checked before the arm connects."""
    from vpp.robots.collect import collect
    from vpp.robots.replay import ReplayedDemonstrations, ReplayError, open_source, parse_episodes

    try:
        dataset, _ = open_source(args.source, args.start, args.rate)
        episodes = parse_episodes(args.episodes, dataset.num_episodes)
        if not args.camera:
            raise ReplayError("collect replay records cameras: bind at least one with --camera NAME=SPEC")
        with contextlib.ExitStack() as stack:
            cameras = bind_cameras(args.robot, args.camera, None, args.image_size)
            for camera in cameras:
                stack.callback(camera.close)
            robot, _ = build_robot(args, args.image_size)
            with robot:
                source = ReplayedDemonstrations(
                    args.source,
                    robot,
                    args.robot,
                    cameras,
                    args.image_size,
                    rate_hz=args.rate,
                    servo_rate_hz=args.servo_rate,
                    start=args.start,
                )
                tasks = source.tasks(episodes)
                state = collect(args.out, source, tasks, 1, args.max_attempts)
    except ReplayError as error:
        print(f"vpp-robot collect replay: {error}", file=sys.stderr)
        return 2
    return _report_collection(args, state, tasks, 1)


def eval_metaworld(args: argparse.Namespace) -> int:
    from vpp.robots.envs.metaworld_tasks import select_tasks
    from vpp.robots.evaluate import evaluate_metaworld

    if args.policy == "oracle":
        policy, name = "oracle", "MetaWorld oracle"
    else:
        policy, name = load_policy(args.policy, threads=args.inference_threads), args.name or args.policy
    evaluate_metaworld(
        policy,
        select_tasks(args.tasks),
        episodes=args.episodes,
        cameras=args.camera or ["corner"],
        image_size=args.image_size,
        output=args.out,
        name=name,
        execute=args.execute_steps,
        max_steps=args.max_steps,
        split=args.split,
        videos_per_task=args.videos_per_task,
        blind_cameras=args.blind_camera or (),
        blind_mode=args.blind_mode,
    )
    return 0


def eval_compare(args: argparse.Namespace) -> int:
    from vpp.robots.compare import EvaluationFileError, compare, table

    named = []
    for item in args.runs:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            print(f"vpp-robot eval compare: {item!r}: expected NAME=FOLDER", file=sys.stderr)
            return 2
        named.append((name, folder))
    try:
        rows = compare(named)
    except (EvaluationFileError, ValueError) as error:
        print(f"vpp-robot eval compare: {error}", file=sys.stderr)
        return 2
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(row) for row in rows], indent=2) + "\n")
    return 0


def eval_grasp(args: argparse.Namespace) -> int:
    from vpp.robots.evaluate import GraspEvalConfig, evaluate_grasps

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
        blind_cameras=tuple(args.blind_camera or ()),
        blind_mode=args.blind_mode,
    )
    result = evaluate_grasps(policy, args.instruction, config, demos=args.demos, out=args.out)
    seconds = [rollout.wall_s for rollout in result.rollouts]
    print(
        f"{result.summary()} (cube lifted >= {100 * config.lift_m:.0f} cm between the fingers within "
        f"{config.max_seconds:g} s, from cube positions not in the demonstrations; {result.wall_s:.0f} s wall, "
        f"{np.mean(seconds):.1f} s per rollout)"
    )
    return 0


def _add_blind_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--blind-camera",
        action="append",
        default=None,
        metavar="NAME",
        help="the control for 'does the policy use this camera?' (repeatable): the policy sees a fixed "
        "image from camera NAME instead of the live one; compare its success with an unblinded run's",
    )
    parser.add_argument(
        "--blind-mode",
        choices=BLIND_MODES,
        default="first",
        help="first: the first frame the camera showed, held for the whole evaluation (a real scene, never "
        "the current one); gray: a uniform gray image (out of distribution)",
    )


POLICY_HELP = (
    "an artifact folder (it holds manifest.json), a saved torch policy folder (vpp-policy train's run/model; needs "
    f"vpp-policy), a policy server's ws://host:port, or a built-in: {', '.join(BUILT_IN_POLICIES)}"
)
CAMERA_HELP = (
    "franka/xarm: bind the policy's camera NAME to a real camera, repeatable: NAME=realsense:SERIAL, "
    "NAME=opencv:INDEX (or /dev/videoN), or a recording to replay: opencv:VIDEO, opencv:DIR/%%04d.png, "
    "opencv:DIR, realsense:FILE.db3; options follow with commas: size=WxH, fps=N, depth=1 (realsense), "
    "loop=1 (recordings), max-age=SECONDS (older frames are an error; default 0.5), timeout=SECONDS "
    "(no frame that long is a dropped stream; default 2). Every camera the policy names must be bound; "
    "simulated arms render their own"
)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}; expected seconds, e.g. 0.3") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}; expected a positive number of seconds")
    return value


REPORT_TIMEOUT_HELP = (
    "xarm: a controller state report older than this many seconds counts as a lost link (the arm is stopped); "
    "the reports come at 100 Hz, so the default allows 0.3 s of network or scheduling hiccup"
)
ENFORCE_REALTIME_HELP = (
    "franka: have libfranka require a real-time (PREEMPT_RT) kernel, as franky and libfranka do by default; "
    "a PC without one (or a simulator such as franky-sim) needs --no-enforce-realtime"
)
# vpp.robots.replay.START_POSES, without importing the collector for every command.
START_CHOICES = ("current", "recorded")
TASKS_HELP = "mt50 | easy | middle | hard | comma-separated MetaWorld task names"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vpp-robot", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run a policy on an arm")
    run_parser.add_argument("--robot", choices=ROBOTS, required=True)
    run_parser.add_argument("--policy", required=True, help=POLICY_HELP)
    run_parser.add_argument("--instruction", required=True)
    run_parser.add_argument("--seconds", type=float, default=10.0)
    run_parser.add_argument("--out", default="robot_run")
    run_parser.add_argument("--host", help="controller address (franka, xarm)")
    run_parser.add_argument("--camera", action="append", default=None, metavar="NAME=SPEC", help=CAMERA_HELP)
    run_parser.add_argument(
        "--enforce-realtime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=ENFORCE_REALTIME_HELP,
    )
    run_parser.add_argument(
        "--report-timeout", type=positive_seconds, default=0.3, metavar="SECONDS", help=REPORT_TIMEOUT_HELP
    )
    run_parser.add_argument("--rate", type=float, default=10.0, help="policy rate, Hz")
    run_parser.add_argument("--servo-rate", type=float, default=100.0, help="interpolation/command rate, Hz")
    run_parser.add_argument("--execute-steps", type=int, default=8, help="actions executed per chunk")
    run_parser.add_argument(
        "--ensemble-decay", type=float, default=None, help="ACT temporal ensembling m (off if unset)"
    )
    run_parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="side of the square camera images, pixels: simulated cameras render it, real ones are cropped to "
        f"their centred square and resized to it (default: the artifact's image size, else {DEFAULT_IMAGE_SIZE})",
    )
    run_parser.add_argument(
        "--inference-threads",
        type=int,
        default=None,
        help="ONNX Runtime threads for an artifact (default: one per core; 1 leaves a core to a simulator)",
    )
    run_parser.add_argument(
        "--no-record", dest="record", action="store_false", help="skip the LeRobot episode"
    )
    # Defaults match `collect`, so that a policy trained on its demonstrations starts in their scene.
    run_parser.add_argument(
        "--sim-start", choices=("ready", "home"), default="ready", help="simulated arm's start pose"
    )
    run_parser.add_argument(
        "--sim-seed", type=int, default=EVAL_SEED, help="cube spawn seed (collect uses seeds from 0)"
    )
    run_parser.add_argument(
        "--object-jitter", type=float, default=0.1, help="cube spawn range, +-metres on x and y"
    )
    run_parser.set_defaults(func=run)
    collect_parser = commands.add_parser(
        "collect", help="scripted-expert demonstrations -> LeRobotDataset v3 (resumable)"
    )
    collect_sources = collect_parser.add_subparsers(dest="source", required=True)
    metaworld = collect_sources.add_parser(
        "metaworld", help="MetaWorld's oracles, from the train split's configurations"
    )
    metaworld.add_argument("--tasks", default="mt50", help=TASKS_HELP)
    metaworld.add_argument("--episodes", type=int, default=50, help="kept episodes per task")
    metaworld.add_argument("--camera", action="append", default=None, help="repeatable; default: corner")
    metaworld.add_argument("--image-size", type=int, default=64, help="rendered image side, pixels")
    metaworld.add_argument(
        "--video",
        default="lossless",
        choices=["lossless", "compact"],
        help="lossless: H.264 4:4:4 crf 0, keeps one-pixel goal markers at 64 px; compact: the default codec in 4:2:0 "
        "(a resumed folder keeps its encoding)",
    )
    metaworld.add_argument("--out", required=True, help="dataset folder (extended if it exists)")
    metaworld.set_defaults(func=collect_metaworld)
    grasp = collect_sources.add_parser("grasp", help="GraspCubeExpert on a simulated arm, in simulated time")
    # The expert's grasp (closing threshold, cube size) is tuned to the Panda hand only.
    grasp.add_argument("--robot", choices=("sim-panda",), default="sim-panda")
    grasp.add_argument("--episodes", type=int, default=8, help="episodes the dataset should hold")
    grasp.add_argument("--out", required=True, help="dataset folder (extended if it exists)")
    grasp.add_argument(
        "--max-seconds", type=float, default=15.0, help="cap on an episode (it ends when the cube is grasped)"
    )
    grasp.add_argument("--rate", type=float, default=10.0, help="policy (and recording) rate, Hz")
    grasp.add_argument("--servo-rate", type=float, default=100.0, help="interpolation/command rate, Hz")
    grasp.add_argument("--image-size", type=int, default=32, help="camera side, pixels")
    grasp.add_argument("--seed", type=int, default=0, help="attempt k spawns the cube from seed + k")
    grasp.add_argument(
        "--object-jitter", type=float, default=0.1, help="cube spawn range, +-metres on x and y"
    )
    grasp.set_defaults(func=collect_grasp)
    replay = collect_sources.add_parser(
        "replay",
        help="a LeRobot dataset's actions replayed on a real arm while its --camera flags are recorded (resumable)",
    )
    replay.add_argument(
        "--source", required=True, help="LeRobot v3 dataset whose episodes' actions are replayed"
    )
    replay.add_argument("--episodes", default=None, help="source episodes: all (default), or e.g. 0,3,5-9")
    replay.add_argument("--robot", choices=("franka", "xarm"), required=True)
    replay.add_argument("--host", required=True, help="controller address")
    replay.add_argument("--camera", action="append", default=None, metavar="NAME=SPEC", help=CAMERA_HELP)
    replay.add_argument("--out", required=True, help="dataset folder (extended if it exists)")
    replay.add_argument(
        "--image-size",
        type=int,
        default=DEFAULT_IMAGE_SIZE,
        help="side of the recorded square images, pixels",
    )
    replay.add_argument(
        "--rate", type=float, default=None, help="replay (and recording) rate, Hz (default: the source's fps)"
    )
    replay.add_argument("--servo-rate", type=float, default=100.0, help="interpolation/command rate, Hz")
    replay.add_argument(
        "--start",
        choices=START_CHOICES,
        default="current",
        help="where each replay starts: current (the pose the arm had when the collection began) or recorded "
        "(the source episode's first observation.state pose, in the arm's base frame)",
    )
    replay.add_argument("--max-attempts", type=int, default=2, help="attempts per source episode")
    replay.add_argument(
        "--report-timeout", type=positive_seconds, default=0.3, metavar="SECONDS", help=REPORT_TIMEOUT_HELP
    )
    replay.add_argument(
        "--enforce-realtime", action=argparse.BooleanOptionalAction, default=True, help=ENFORCE_REALTIME_HELP
    )
    replay.set_defaults(func=collect_replay)

    eval_parser = commands.add_parser(
        "eval", help="a torch policy or an exported artifact in simulation, from starts no demonstration used"
    )
    eval_tasks = eval_parser.add_subparsers(dest="task", required=True)
    metaworld = eval_tasks.add_parser(
        "metaworld", help="success rates with 95%% intervals in the paper's Table 2 layout (resumable)"
    )
    metaworld.add_argument(
        "--policy", required=True, help=f"{POLICY_HELP}, or oracle (MetaWorld's scripted policies)"
    )
    metaworld.add_argument("--name", help="row name in the results table (default: the policy path)")
    metaworld.add_argument("--tasks", default="mt50", help=TASKS_HELP)
    metaworld.add_argument("--episodes", type=int, default=10, help="per task")
    metaworld.add_argument("--camera", action="append", default=None, help="repeatable; default: corner")
    metaworld.add_argument("--image-size", type=int, default=64, help="rendered image side, pixels")
    metaworld.add_argument(
        "--execute-steps", type=int, default=None, help="actions of each chunk to execute (default: all)"
    )
    metaworld.add_argument("--max-steps", type=int, default=None, help="cap episode length (smoke runs)")
    metaworld.add_argument(
        "--split",
        default="eval",
        choices=["eval", "train"],
        help="configurations to start from: eval (never collected) "
        "or train (the demonstrations' own, to measure fitting)",
    )
    metaworld.add_argument(
        "--videos-per-task", type=int, default=1, help="rollout videos of each task's first N episodes"
    )
    metaworld.add_argument(
        "--inference-threads", type=int, default=None, help="ONNX Runtime threads for an artifact"
    )
    metaworld.add_argument("--out", required=True)
    _add_blind_arguments(metaworld)
    metaworld.set_defaults(func=eval_metaworld)
    grasp = eval_tasks.add_parser(
        "grasp", help="grasp success on the simulated arm, from cube positions not in the demonstrations"
    )
    grasp.add_argument("--robot", choices=("sim-panda",), default="sim-panda")
    grasp.add_argument("--policy", required=True, help=POLICY_HELP)
    grasp.add_argument("--instruction", required=True)
    grasp.add_argument("--episodes", type=int, default=10, help="rollouts")
    grasp.add_argument("--seed", type=int, default=EVAL_SEED, help="rollout k spawns the cube from seed + k")
    grasp.add_argument(
        "--demos", help="the demonstrations' folder: refuse seeds or cube starts it was collected from"
    )
    grasp.add_argument("--out", default="grasp_eval")
    grasp.add_argument("--max-seconds", type=float, default=15.0, help="simulated seconds per rollout")
    grasp.add_argument("--rate", type=float, default=10.0, help="policy rate, Hz")
    grasp.add_argument("--servo-rate", type=float, default=100.0, help="interpolation/command rate, Hz")
    grasp.add_argument("--execute-steps", type=int, default=8, help="actions executed per chunk")
    grasp.add_argument(
        "--image-size", type=int, default=None, help="simulated camera side, pixels (default: the artifact's)"
    )
    grasp.add_argument(
        "--object-jitter", type=float, default=0.1, help="cube spawn range, +-metres on x and y"
    )
    grasp.add_argument(
        "--inference-threads", type=int, default=None, help="ONNX Runtime threads for an artifact"
    )
    _add_blind_arguments(grasp)
    grasp.set_defaults(func=eval_grasp)
    compare = eval_tasks.add_parser(
        "compare",
        help="variants against a baseline on the same starts: Wilson 95%% intervals, whether each lies inside the "
        "baseline's, the starts only one solved and the exact McNemar p",
    )
    compare.add_argument(
        "runs",
        nargs="+",
        metavar="NAME=FOLDER",
        help="evaluation folders (eval grasp or eval metaworld --out), the baseline first",
    )
    compare.add_argument("--json", help="also write the comparison to this JSON file")
    compare.set_defaults(func=eval_compare)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The filter logs every clamp at INFO, 100 times a second while streaming; the readout is the live view.
    logging.getLogger("vpp.robots.safety").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except CameraError as error:
        # Camera set-up problems are the user's to fix: the message says what to change.
        print(f"vpp-robot {args.command}: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    except RobotError as error:
        # Raised before the control loop runs (a loop failure ends in its report instead): a
        # controller that cannot be reached, a kernel without realtime, a missing gripper. The
        # message names the fix; a traceback would bury it.
        print(f"vpp-robot {args.command}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
