"""Built-in videos: a coloured square moving as its instruction says.

Small enough to train on in seconds, with motion that depends on the text, so a TVP that learned
anything predicts different futures for different instructions from the same first frame.
"""

from __future__ import annotations

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230)}
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def moving_square_video(
    colour: str, direction: str, num_frames: int, size: int, start: tuple[int, int] | None = None
) -> np.ndarray:
    """uint8 (T, size, size, 3): a square of side size/4 moving size/(2T) pixels a frame."""
    side = max(2, size // 4)
    dy, dx = DIRECTIONS[direction]
    speed = max(1, size // (2 * num_frames))
    y, x = start if start is not None else ((size - side) // 2, (size - side) // 2)
    frames = np.full((num_frames, size, size, 3), 235, dtype=np.uint8)
    for t in range(num_frames):
        ty = int(np.clip(y + dy * speed * t, 0, size - side))
        tx = int(np.clip(x + dx * speed * t, 0, size - side))
        frames[t, ty : ty + side, tx : tx + side] = COLOURS[colour]
    return frames


def moving_squares(num_frames: int = 16, size: int = 32) -> tuple[list[np.ndarray], list[str]]:
    """One video per (colour, direction): 12 videos and instructions like 'move the red square left'."""
    videos, instructions = [], []
    for colour in COLOURS:
        for direction in DIRECTIONS:
            videos.append(moving_square_video(colour, direction, num_frames, size))
            instructions.append(f"move the {colour} square {direction}")
    return videos, instructions
