"""``vpp-tvp``: train, generate, extract predictive features, cache latents, or run the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("vpp.tvp")


def parse_source(spec: str, default_name: str):
    """``builtin:squares``, ``lerobot:PATH[#camera]``, ``videos:PATH``; ``name=`` prefix names it."""
    from vpp.tvp.data.sources import ArrayClipSource, LeRobotClipSource, VideoFolderSource
    from vpp.tvp.data.synthetic import moving_squares

    name = default_name
    if "=" in spec.split(":", 1)[0]:
        name, spec = spec.split("=", 1)
    kind, _, target = spec.partition(":")
    if kind == "builtin" and target == "squares":
        videos, instructions = moving_squares(num_frames=16, size=64)
        return ArrayClipSource(
            videos, instructions, name=name if name != default_name else "squares", stride=1
        )
    if kind == "lerobot":
        path, _, camera = target.partition("#")
        return LeRobotClipSource(path, camera=camera or None, name=name)
    if kind == "videos":
        return VideoFolderSource(target, name=name)
    raise SystemExit(
        f"unknown data source {spec!r}; expected builtin:squares, lerobot:PATH[#camera] or videos:PATH"
    )


def build_dataset(args, model):
    from vpp.tvp.data.mixture import MixtureClipDataset

    sources = [parse_source(spec, f"source{i}") for i, spec in enumerate(args.data)]
    weights = None
    if args.weights:
        weights = {s.name: 1.0 for s in sources}
        for item in args.weights:
            key, _, value = item.partition("=")
            weights[key] = float(value)
    return MixtureClipDataset(
        sources,
        num_frames=model.config.num_frames,
        image_size=model.config.image_size,
        weights=weights,
        seed=args.seed,
    )


def load_model(args):
    from vpp.tvp.model import TextGuidedVideoPredictor

    sizes = {
        k: v for k, v in (("image_size", args.image_size), ("num_frames", args.num_frames)) if v is not None
    }
    if args.model:
        if args.svd or args.preset or sizes:
            raise SystemExit(
                "--model's own config fixes the model: drop --svd, --preset, --image-size and --num-frames"
            )
        return TextGuidedVideoPredictor.from_pretrained(args.model)
    if args.svd:
        if args.preset:
            raise SystemExit(
                f"--preset {args.preset} and --svd exclude each other: the SVD folder's configs give the sizes "
                "(set the video's with --image-size and --num-frames)"
            )
        if not args.clip:
            raise SystemExit("--svd needs --clip (a local CLIP text encoder + tokenizer folder)")
        sizes = {"image_size": 256, "num_frames": 16, **sizes}
        return TextGuidedVideoPredictor.from_svd(args.svd, args.clip, variant=args.variant, **sizes)
    if args.variant:
        raise SystemExit("--variant picks the weight files of an --svd folder; there is no --svd")
    torch.manual_seed(args.seed)
    return TextGuidedVideoPredictor.from_preset(args.preset or "tiny", **sizes)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def prediction_scores(truth: torch.Tensor, predicted: torch.Tensor) -> dict:
    """PSNR (dB, frames in [-1, 1] as 8-bit images) of predicted videos (B, T, 3, H, W) against the
    real ones, per frame, beside the trivial prediction that holds the first frame. A model that
    predicts motion beats the held frame on the later frames; one that learned only to copy, or
    blurs, does not."""
    from vpp.tvp.metrics import psnr

    truth, predicted = truth.float(), predicted.float()
    model = psnr(predicted, truth, per_frame=True)
    held = psnr(truth[:, :1].expand_as(truth), truth, per_frame=True)
    later = slice(1, None)
    return {
        "clips": truth.shape[0],
        "psnr_per_frame": [round(float(v), 3) for v in model],
        "held_first_frame_psnr_per_frame": [round(float(v), 3) for v in held],
        # frame 0 is the conditioning frame: the comparison is over the frames to predict
        "psnr_later_frames": round(float(model[later].mean()), 3),
        "held_first_frame_psnr_later_frames": round(float(held[later].mean()), 3),
    }


def write_comparison(
    path: Path, truth: torch.Tensor | None, predicted: torch.Tensor, instructions: list[str]
) -> list[Path]:
    """A PNG grid (per example: ground-truth row above predicted row), a GIF of the prediction and
    a JSON record (with :func:`prediction_scores` when the real videos are known)."""
    import imageio.v3 as iio

    rows = []
    for i in range(predicted.shape[0]):
        if truth is not None:
            rows.append(np.concatenate(list(to_uint8(truth[i])), axis=1))
        rows.append(np.concatenate(list(to_uint8(predicted[i])), axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    png = path.with_suffix(".png")
    iio.imwrite(png, np.concatenate(rows, axis=0))
    gif = path.with_suffix(".gif")
    frames = np.concatenate(list(to_uint8(predicted)), axis=2)  # examples side by side
    iio.imwrite(gif, frames, duration=150, loop=0)
    record = {"instructions": instructions, "rows": "truth/predicted" if truth is not None else "predicted"}
    if truth is not None:
        record["scores"] = prediction_scores(truth, predicted)
    path.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return [png, gif]


def train_start_model(args):
    """The model a TVP run trains from, the record of its VAE fit, and whether to fit it now.

    A run that has a checkpoint, or a complete ``base/`` from an earlier start that holds what
    this one asks for (a VAE fitted for ``--fit-vae-steps``), continues from ``base/``: its
    data, latent cache and weights then all see the VAE the run began with. Otherwise the model
    is built as asked."""
    from vpp.tvp.checkpoint import latest_checkpoint
    from vpp.tvp.model import TextGuidedVideoPredictor
    from vpp.tvp.train import base_folder, is_complete_base, read_vae_fit

    output = Path(args.output_dir)
    base = base_folder(output)
    fitted = read_vae_fit(base) if is_complete_base(base) else None
    if latest_checkpoint(output / "checkpoints") is not None:
        if args.fit_vae_steps and (fitted or {}).get("steps") != args.fit_vae_steps:
            logger.warning(
                "resuming %s with the VAE in %s, which was not fitted for --fit-vae-steps %d (record: %s)",
                output,
                base,
                args.fit_vae_steps,
                fitted,
            )
        return TextGuidedVideoPredictor.from_pretrained(base), fitted, False
    if is_complete_base(base) and (fitted or {}).get("steps", 0) == args.fit_vae_steps:
        logger.info("reusing %s from an earlier start of this run", base)
        return TextGuidedVideoPredictor.from_pretrained(base), fitted, False
    return load_model(args), None, bool(args.fit_vae_steps)


def cmd_train(args) -> None:
    from vpp.data.config import config_from_arguments
    from vpp.tvp.config import TrainConfig
    from vpp.tvp.data.latent_cache import LatentCache
    from vpp.tvp.train import TVPTrainer, fit_vae

    # checked before the model is built: a bad value fails at once
    config = config_from_arguments(TrainConfig, args, seed=args.seed)
    model, vae_fit, fit_now = train_start_model(args)
    dataset = build_dataset(args, model)
    if fit_now:
        # every process fits the same VAE; the first one draws the curve
        plot = Path(config.output_dir) / "vae_fit_loss.png" if int(os.environ.get("RANK", "0")) == 0 else None
        vae_fit = fit_vae(model, dataset, args.fit_vae_steps, seed=args.seed, plot_path=plot).record()
    if args.latent_cache:
        cache = LatentCache.for_model(args.latent_cache, model)
        cache.build(dataset, model)
        dataset.latent_cache = cache
    trainer = TVPTrainer(model, dataset, config, vae_fit=vae_fit)
    losses = trainer.train()
    if losses:
        logger.info(
            "steps %d..%d: first loss %.4f, last loss %.4f",
            trainer.start_step - len(losses) + 1,
            trainer.start_step,
            losses[0],
            losses[-1],
        )


def cmd_generate(args) -> None:
    from vpp.tvp.data.mixture import collate_clips
    from vpp.tvp.sampling import generate_video

    model = load_model(args).eval()
    generator = torch.Generator().manual_seed(args.seed)
    truth = None
    if args.image:
        import imageio.v3 as iio

        from vpp.tvp.data.mixture import resize_frames

        if not args.instruction:
            raise SystemExit("--image needs --instruction")
        first = resize_frames(iio.imread(args.image)[None, ..., :3], model.config.image_size)
        instructions = [args.instruction]
    else:
        dataset = build_dataset(args, model)
        batch = collate_clips([dataset[i] for i in range(args.num)])
        truth = batch["video"]
        first = truth[:, 0]
        instructions = batch["instruction"]
    predicted = generate_video(
        model, first, instructions, num_steps=args.steps, generator=generator, progress=True
    )
    for path in write_comparison(Path(args.out), truth, predicted, instructions):
        print(path)


def cmd_features(args) -> None:
    import imageio.v3 as iio
    from safetensors.torch import save_file

    from vpp.tvp.data.mixture import resize_frames
    from vpp.tvp.features import predictive_features

    model = load_model(args).eval()
    views = torch.stack(
        [resize_frames(iio.imread(p)[None, ..., :3], model.config.image_size)[0] for p in args.image]
    )
    features = predictive_features(
        model, views[None], [args.instruction], generator=torch.Generator().manual_seed(args.seed)
    )
    save_file(
        {"features": features.contiguous()},
        args.out,
        metadata={"instruction": args.instruction, "seed": str(args.seed)},
    )
    print(f"{args.out}: features {tuple(features.shape)} (batch, views, frames, channels, height, width)")


def cmd_convert(args) -> None:
    from vpp.tvp.model import convert_legacy_tvp

    print(convert_legacy_tvp(args.old, args.new))


def cmd_demo(args) -> None:
    """Tiny TVP on the built-in moving squares: fit its VAE, train it, predict futures."""
    args.preset, args.model, args.svd, args.clip, args.variant = "tiny", None, None, None, None
    args.image_size = args.num_frames = None
    args.data, args.weights = ["builtin:squares"], None
    args.fit_vae_steps, args.latent_cache = args.vae_steps, None
    # the other TrainConfig fields keep their defaults
    args.max_steps, args.learning_rate = args.steps, args.lr
    args.checkpoint_every = max(1, args.steps // 4)
    args.output_dir = str(Path(args.out) / "run")
    cmd_train(args)
    args.model, args.preset = str(Path(args.out) / "run" / "model"), None
    args.image, args.num, args.steps = None, 4, args.sampling_steps
    args.out = str(Path(args.out) / "prediction")
    cmd_generate(args)


def main(argv: list[str] | None = None) -> None:
    from vpp.data.config import add_config_arguments
    from vpp.tvp.config import TrainConfig, TVPConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="vpp-tvp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("--model", help="folder written by a TVP run (run/model) or save_pretrained")
        p.add_argument("--svd", help="local diffusers Stable Video Diffusion folder (unet/, vae/)")
        p.add_argument("--clip", help="local CLIP folder (text encoder + tokenizer), with --svd")
        p.add_argument(
            "--variant", help="with --svd: weight files of this variant, e.g. fp16 (loaded as float32)"
        )
        p.add_argument(
            "--preset", choices=TVPConfig.preset_names(), help="a model from scratch (default tiny)"
        )
        p.add_argument(
            "--image-size", type=int, help="with --svd (default 256) or --preset: frame size in pixels"
        )
        p.add_argument("--num-frames", type=int, help="with --svd (default 16) or --preset: frames per clip")
        p.add_argument("--seed", type=int, default=0)

    def data_args(p):
        p.add_argument(
            "--data",
            action="append",
            default=[],
            help="builtin:squares | lerobot:PATH[#camera] | videos:PATH, optionally NAME=... (repeatable)",
        )
        p.add_argument("--weights", nargs="*", help="NAME=WEIGHT per source (default: equal)")

    train = sub.add_parser("train", help="fine-tune a TVP with the EDM objective (resumes from --output)")
    model_args(train)
    data_args(train)
    # every TrainConfig field is an option; --seed is model_args' (it also seeds a preset's weights)
    add_config_arguments(
        train,
        TrainConfig,
        exclude=["seed"],
        aliases={"output_dir": "--output", "max_steps": "--steps", "learning_rate": "--lr"},
    )
    train.add_argument("--latent-cache", help="folder for pre-encoded VAE latents (built first, resumable)")
    train.add_argument(
        "--fit-vae-steps",
        type=int,
        default=0,
        help="first fit the VAE for this many steps (models without a pretrained VAE)",
    )
    train.set_defaults(func=cmd_train)

    gen = sub.add_parser("generate", help="predict videos from first frames and instructions")
    model_args(gen)
    data_args(gen)
    gen.add_argument("--image", help="a first frame (PNG/JPEG) instead of --data")
    gen.add_argument("--instruction")
    gen.add_argument("--num", type=int, default=4, help="clips to take from --data")
    gen.add_argument("--steps", type=int, default=None, help="Euler steps (default: config, 30)")
    gen.add_argument("--out", required=True, help="output path stem: writes .png grid, .gif and .json")
    gen.set_defaults(func=cmd_generate)

    feats = sub.add_parser("features", help="predictive features of one observation (one image per view)")
    model_args(feats)
    feats.add_argument("--image", action="append", required=True, help="one per camera view")
    feats.add_argument("--instruction", required=True)
    feats.add_argument("--out", required=True, help=".safetensors file")
    feats.set_defaults(func=cmd_features)

    convert = sub.add_parser(
        "convert",
        help="rewrite a TVP folder of the old layout (tvp_config.json, unet/, vae/...) as "
        "config.json + model.safetensors",
    )
    convert.add_argument("old", help="TVP folder with tvp_config.json")
    convert.add_argument("new", help="folder to write")
    convert.set_defaults(func=cmd_convert)

    demo = sub.add_parser("demo", help="tiny TVP trained on built-in moving squares, then a predicted future")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--steps", type=int, default=500)
    demo.add_argument("--vae-steps", type=int, default=300)
    demo.add_argument("--sampling-steps", type=int, default=30)
    demo.add_argument("--batch-size", type=int, default=4)
    demo.add_argument("--lr", type=float, default=1e-3)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
