import numpy as np
import torch

from vpp.data.video_io import write_video
from vpp.tvp.data.latent_cache import LatentCache
from vpp.tvp.data.mixture import MixtureClipDataset, resize_frames
from vpp.tvp.data.sources import ArrayClipSource, VideoFolderSource
from vpp.tvp.data.synthetic import moving_squares


def test_cached_latents_match_the_vae_and_building_resumes(tmp_path, tiny_model, squares_dataset):
    cache = LatentCache.for_model(tmp_path, tiny_model)
    assert cache.build(squares_dataset, tiny_model, progress=False) == 12
    assert cache.build(squares_dataset, tiny_model, progress=False) == 0  # nothing left to do
    episode = squares_dataset.all_episodes()[3]
    indices = np.array([0, 2, 4])
    expected = tiny_model.encode_video(resize_frames(episode.read_frames(indices), 32)[None])[0]
    assert torch.allclose(cache.read(episode, indices), expected, atol=2e-2, rtol=1e-2)

    squares_dataset.latent_cache = cache
    item = squares_dataset[0]
    assert "video" not in item and item["latents"].shape == (8, 4, 16, 16)


def test_another_vae_uses_another_cache_folder(tmp_path, tiny_model):
    first = LatentCache.for_model(tmp_path, tiny_model).folder
    with torch.no_grad():
        next(tiny_model.vae.parameters()).add_(1.0)
    assert LatentCache.for_model(tmp_path, tiny_model).folder != first


def _one_source_dataset(source):
    return MixtureClipDataset([source], num_frames=8, image_size=32)


def test_changed_data_under_the_same_name_is_encoded_again(tmp_path, tiny_model):
    """The bug class of issue 12's feature cache: files named by source name and index served the
    old episode's latents after the data under that name changed."""
    videos, instructions = moving_squares(num_frames=12, size=32)
    cache = LatentCache.for_model(tmp_path, tiny_model)
    first = _one_source_dataset(ArrayClipSource(videos[:2], instructions[:2], name="demos"))
    assert cache.build(first, tiny_model, progress=False) == 2
    # same name, same indices, other videos: both are encoded again, and read back as themselves
    second = _one_source_dataset(ArrayClipSource(videos[2:4], instructions[:2], name="demos"))
    assert cache.build(second, tiny_model, progress=False) == 2
    episode = second.all_episodes()[0]
    indices = np.array([0, 5])
    expected = tiny_model.encode_video(resize_frames(episode.read_frames(indices), 32)[None])[0]
    assert torch.allclose(cache.read(episode, indices), expected, atol=2e-2, rtol=1e-2)
    # the unchanged data still finds its own files
    assert cache.build(first, tiny_model, progress=False) == 0


def test_a_video_file_written_again_is_encoded_again(tmp_path, tiny_model):

    videos, _ = moving_squares(num_frames=12, size=32)
    folder = tmp_path / "clips"
    folder.mkdir()
    write_video(folder / "a.mp4", videos[0], fps=10)
    (folder / "a.txt").write_text("move the square")
    cache = LatentCache.for_model(tmp_path / "cache", tiny_model)
    assert cache.build(_one_source_dataset(VideoFolderSource(folder)), tiny_model, progress=False) == 1
    assert cache.build(_one_source_dataset(VideoFolderSource(folder)), tiny_model, progress=False) == 0
    write_video(folder / "a.mp4", videos[1], fps=10)
    assert cache.build(_one_source_dataset(VideoFolderSource(folder)), tiny_model, progress=False) == 1
