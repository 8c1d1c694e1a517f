import pytest
import torch

from vpp.tvp.data.mixture import MixtureClipDataset
from vpp.tvp.data.sources import ArrayClipSource
from vpp.tvp.data.synthetic import moving_squares
from vpp.tvp.model import TextGuidedVideoPredictor


@pytest.fixture
def tiny_model() -> TextGuidedVideoPredictor:
    torch.manual_seed(0)
    return TextGuidedVideoPredictor.from_preset("tiny").eval()


@pytest.fixture
def squares_dataset() -> MixtureClipDataset:
    videos, instructions = moving_squares(num_frames=12, size=32)
    return MixtureClipDataset(
        [ArrayClipSource(videos, instructions, name="squares")], num_frames=8, image_size=32
    )
