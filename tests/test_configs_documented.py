"""Every config dataclass of every package uses the one mechanism of ``vpp.data.config`` and
documents each of its fields (the training CLIs show that text as option help)."""

from __future__ import annotations

import dataclasses

import vpp.policy.config
import vpp.policy.policy
import vpp.tvp.config
from vpp.data.config import Config


def config_classes() -> list[type[Config]]:
    found, stack = [], list(Config.__subclasses__())
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        if cls.__module__.startswith("vpp.") and dataclasses.is_dataclass(cls):
            found.append(cls)
    return found


def test_every_config_field_is_documented():
    classes = {cls.__name__ for cls in config_classes()}
    expected = {
        "TVPConfig",
        "TrainingLoopConfig",
        "EDMConfig",
        "FeatureConfig",
        "TrainConfig",
        "PolicyHeadConfig",
        "VideoFormerConfig",
        "DiTHeadConfig",
        "DiffusionConfig",
        "VPPConfig",
        "PolicyTrainConfig",
        "SavedPolicyConfig",
    }
    assert expected <= classes
    undocumented = [
        f"{cls.__name__}.{name}"
        for cls in config_classes()
        for name, text in cls.field_help().items()
        if not text
    ]
    assert not undocumented


def test_one_config_error_for_every_package():
    assert vpp.tvp.config.ConfigError is vpp.policy.config.ConfigError is vpp.policy.policy.ConfigError
