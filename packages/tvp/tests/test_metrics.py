import math

import pytest
import torch

from vpp.tvp.metrics import psnr


def test_psnr_of_a_known_error_per_frame_and_overall():
    target = torch.zeros(2, 3, 3, 4, 4)
    prediction = target.clone()
    prediction[:, 1] = 0.2  # MSE on the [0, 1] scale: (0.2 / 2)^2 = 0.01 -> 20 dB
    prediction[:, 2] = 3.0  # clamped to 1 first: (1 / 2)^2 = 0.25 -> 6.02 dB
    per_frame = psnr(prediction, target, per_frame=True)
    assert per_frame.shape == (3,)
    assert per_frame[0] == pytest.approx(100.0)
    assert per_frame[1] == pytest.approx(20.0, abs=1e-4)
    assert per_frame[2] == pytest.approx(10 * math.log10(4), abs=1e-4)
    overall = (0.01 + 0.25) / 3
    assert psnr(prediction, target) == pytest.approx(-10 * math.log10(overall), abs=1e-4)
    with pytest.raises(ValueError, match=r"prediction \(2, 3, 3, 4, 4\) and target \(2, 2, 3, 4, 4\) differ"):
        psnr(prediction, target[:, :2])
