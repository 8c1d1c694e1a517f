import numpy as np
import torch

from vpp.tvp.data.latent_cache import LatentCache
from vpp.tvp.data.mixture import resize_frames


def test_cached_latents_match_the_vae_and_building_resumes(tmp_path, tiny_model, squares_dataset):
    cache = LatentCache.for_model(tmp_path, tiny_model)
    assert cache.build(squares_dataset, tiny_model, progress=False) == 12
    assert cache.build(squares_dataset, tiny_model, progress=False) == 0  # nothing left to do
    episode = squares_dataset.all_episodes()[3]
    indices = np.array([0, 2, 4])
    expected = tiny_model.encode_video(resize_frames(episode.read_frames(indices), 32)[None])[0]
    assert torch.allclose(cache.read(episode.key, indices), expected, atol=2e-2, rtol=1e-2)

    squares_dataset.latent_cache = cache
    item = squares_dataset[0]
    assert "video" not in item and item["latents"].shape == (8, 4, 16, 16)


def test_another_vae_uses_another_cache_folder(tmp_path, tiny_model):
    first = LatentCache.for_model(tmp_path, tiny_model).folder
    with torch.no_grad():
        next(tiny_model.vae.parameters()).add_(1.0)
    assert LatentCache.for_model(tmp_path, tiny_model).folder != first
