"""Does the MetaWorld TVP predict the future of scenes it never saw?

    RUN=runs/mw3 .venv/bin/python scripts/metaworld_tvp_check.py   # -> $RUN/tvp-predict/unseen.{png,gif,json}

The oracle's evaluation videos (``$RUN/eval-oracle/videos``) show configurations of the eval split,
which no demonstration, and so no TVP training clip, came from. From each video's first frame and
its task's instruction the TVP predicts the clip it was trained to predict (its number of frames at
the LeRobot clip source's stride of 2, from the episode's start), and the prediction is scored
against the real frames beside the trivial prediction that holds the first frame
(``vpp.tvp.cli.prediction_scores``). The videos are the evaluation's H.264 files, so the real
frames carry that codec's small error too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import torch

from vpp.robots.envs.metaworld_tasks import INSTRUCTIONS
from vpp.tvp.cli import write_comparison
from vpp.tvp.data.mixture import resize_frames
from vpp.tvp.model import TextGuidedVideoPredictor
from vpp.tvp.sampling import generate_video

STRIDE = 2  # LeRobotClipSource's default, which the TVP trained with


def main() -> None:
    run = Path(os.environ.get("RUN", "runs/mw2"))
    model = TextGuidedVideoPredictor.from_pretrained(run / "tvp" / "model").eval()
    frames = model.config.num_frames
    clips, instructions = [], []
    for path in sorted((run / "eval-oracle" / "videos").glob("*.mp4")):
        task = path.stem.removesuffix("-1")
        video = iio.imread(path)[: (frames - 1) * STRIDE + 1 : STRIDE]
        if len(video) < frames:
            print(f"{path.name}: {len(video)} frames at stride {STRIDE}, fewer than {frames}: left out")
            continue
        clips.append(resize_frames(video, model.config.image_size))
        instructions.append(INSTRUCTIONS[task])
    if not clips:
        raise SystemExit(f"no evaluation video in {run / 'eval-oracle' / 'videos'} is long enough")
    truth = torch.stack(clips)
    predicted = generate_video(
        model, truth[:, 0], instructions, generator=torch.Generator().manual_seed(0), progress=True
    )
    out = run / "tvp-predict" / "unseen"
    for path in write_comparison(out, truth, predicted, instructions):
        print(path)
    scores = json.loads(out.with_suffix(".json").read_text())["scores"]
    print(
        f"{scores['clips']} unseen clips: predicted frames 1-{frames - 1} {scores['psnr_later_frames']:.2f} dB, "
        f"holding the first frame {scores['held_first_frame_psnr_later_frames']:.2f} dB"
    )


if __name__ == "__main__":
    main()
