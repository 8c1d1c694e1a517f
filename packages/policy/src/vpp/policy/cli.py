"""``vpp-policy``: collect demonstrations, train, predict, evaluate."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger("vpp.policy")


def parse_tasks(spec: str) -> list[str]:
    from vpp.policy.envs.metaworld_tasks import ALL_TASKS, GROUPS

    if spec in ("mt50", "all"):
        return list(ALL_TASKS)
    if spec in GROUPS:
        return list(GROUPS[spec])
    return [t.strip() for t in spec.split(",") if t.strip()]


def cmd_collect(args) -> None:
    from vpp.policy.collect import collect_metaworld

    state = collect_metaworld(
        args.out,
        tasks=parse_tasks(args.tasks),
        episodes_per_task=args.episodes,
        cameras=args.camera,
        image_size=args.size,
    )
    kept = sum(p.kept for p in state.tasks.values())
    dropped = sum(p.dropped for p in state.tasks.values())
    print(f"{args.out}: {kept} successful oracle episodes kept, {dropped} unsuccessful dropped")


def cmd_eval(args) -> None:
    from vpp.policy.evaluate import evaluate_metaworld

    if args.policy == "oracle":
        policy, name = "oracle", "MetaWorld oracle"
    else:
        from vpp.policy.policy import VideoPredictionPolicy

        policy = VideoPredictionPolicy.from_pretrained(args.policy).eval()
        name = args.name or args.policy
    evaluate_metaworld(
        policy,
        parse_tasks(args.tasks),
        episodes=args.episodes,
        cameras=args.camera,
        image_size=args.size,
        output=args.out,
        name=name,
        execute=args.execute,
        max_steps=args.max_steps,
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="vpp-policy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def env_args(p, episodes: int) -> None:
        p.add_argument("--env", default="metaworld", choices=["metaworld"])
        p.add_argument("--tasks", default="mt50", help="mt50 | easy | middle | hard | comma-separated task names")
        p.add_argument("--episodes", type=int, default=episodes, help="per task")
        p.add_argument("--camera", action="append", default=None, help="repeatable; default: corner")
        p.add_argument("--size", type=int, default=64, help="rendered image side in pixels")
        p.add_argument("--out", required=True)

    collect = sub.add_parser("collect", help="oracle demonstrations -> LeRobotDataset v3 (resumable)")
    env_args(collect, 50)
    collect.set_defaults(func=cmd_collect)

    evaluate = sub.add_parser("eval", help="success rates with fixed seeds, in the paper's Table 2 layout")
    env_args(evaluate, 10)
    evaluate.add_argument("--policy", required=True, help="a saved policy folder, or 'oracle'")
    evaluate.add_argument("--name", help="row name in the results table")
    evaluate.add_argument("--execute", type=int, default=None, help="actions of each chunk to execute (default: all)")
    evaluate.add_argument("--max-steps", type=int, default=None, help="cap episode length (smoke runs)")
    evaluate.set_defaults(func=cmd_eval)

    args = parser.parse_args(argv)
    if getattr(args, "camera", None) is None and hasattr(args, "camera"):
        args.camera = ["corner"]
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
