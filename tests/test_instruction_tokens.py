"""The built-in byte-level tokenizer keeps every MetaWorld instruction whole and distinct at the
presets that use it, so no two tasks share a text condition."""

from __future__ import annotations

import pytest

from vpp.robots.envs.metaworld_tasks import ALL_TASKS, INSTRUCTIONS
from vpp.tvp.config import TVPConfig
from vpp.tvp.text import load_tokenizer


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_metaworld_instructions_stay_whole_and_distinct(name):
    config = TVPConfig.preset(name)
    assert config.tokenizer == "bytes"
    tokenizer = load_tokenizer(config.tokenizer)
    assert sorted(INSTRUCTIONS) == sorted(ALL_TASKS)
    texts = [INSTRUCTIONS[task] for task in ALL_TASKS]
    ids = tokenizer(texts, padding="max_length", max_length=config.text_max_tokens, truncation=True).input_ids
    assert len({tuple(row) for row in ids}) == len(ALL_TASKS) == 50
    # nothing cut, and the text encoder has a position for every token
    untruncated = tokenizer(texts).input_ids
    assert all(len(row) <= config.text_max_tokens for row in untruncated)
    assert config.text_max_tokens <= config.text_encoder["max_position_embeddings"]


def test_the_paper_preset_keeps_the_papers_20_clip_tokens():
    assert TVPConfig.preset("paper").text_max_tokens == 20
