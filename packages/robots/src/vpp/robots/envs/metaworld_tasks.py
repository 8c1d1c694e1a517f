"""The 50 MetaWorld tasks: difficulty groups as the paper reports them, and one instruction each.

Groups follow Seo et al. (2022), which the paper's Table 2 uses: easy 28, middle (their medium) 11,
hard 11 (their hard 6 + very hard 5). MetaWorld ships no language; the instructions below are
this project's own, one imperative sentence per task naming the object and the motion.
"""

from __future__ import annotations

EASY = (
    "button-press",
    "button-press-topdown",
    "button-press-topdown-wall",
    "button-press-wall",
    "coffee-button",
    "dial-turn",
    "door-close",
    "door-lock",
    "door-open",
    "door-unlock",
    "drawer-close",
    "drawer-open",
    "faucet-close",
    "faucet-open",
    "handle-press",
    "handle-press-side",
    "handle-pull",
    "handle-pull-side",
    "lever-pull",
    "plate-slide",
    "plate-slide-back",
    "plate-slide-back-side",
    "plate-slide-side",
    "reach",
    "reach-wall",
    "window-close",
    "window-open",
    "peg-unplug-side",
)
MIDDLE = (
    "basketball",
    "bin-picking",
    "box-close",
    "coffee-pull",
    "coffee-push",
    "hammer",
    "peg-insert-side",
    "push-wall",
    "soccer",
    "sweep",
    "sweep-into",
)
HARD = (
    "assembly",
    "hand-insert",
    "pick-out-of-hole",
    "pick-place",
    "push",
    "push-back",
    "shelf-place",
    "disassemble",
    "stick-pull",
    "stick-push",
    "pick-place-wall",
)
GROUPS: dict[str, tuple[str, ...]] = {"easy": EASY, "middle": MIDDLE, "hard": HARD}
ALL_TASKS: tuple[str, ...] = EASY + MIDDLE + HARD


def select_tasks(spec: str) -> list[str]:
    """``mt50`` (or ``all``), a group name (easy, middle, hard) or comma-separated task names."""
    if spec in ("mt50", "all"):
        return list(ALL_TASKS)
    if spec in GROUPS:
        return list(GROUPS[spec])
    return [t.strip() for t in spec.split(",") if t.strip()]


INSTRUCTIONS: dict[str, str] = {
    "assembly": "pick up the ring and place it over the peg",
    "basketball": "pick up the ball and drop it into the hoop",
    "bin-picking": "move the block from one bin into the other bin",
    "box-close": "pick up the lid and close the box with it",
    "button-press": "push the button on the front of the box",
    "button-press-topdown": "press the button down from above",
    "button-press-topdown-wall": "reach over the wall and press the button down from above",
    "button-press-wall": "reach past the wall and push the button",
    "coffee-button": "push the button on the coffee machine",
    "coffee-pull": "pull the mug away from the coffee machine",
    "coffee-push": "push the mug under the coffee machine",
    "dial-turn": "turn the dial around",
    "disassemble": "lift the ring off the peg",
    "door-close": "push the open door closed",
    "door-lock": "turn the lock on the door down",
    "door-open": "pull the door open by its handle",
    "door-unlock": "turn the lock on the door up",
    "drawer-close": "push the drawer closed",
    "drawer-open": "pull the drawer open",
    "faucet-close": "turn the faucet handle to close it",
    "faucet-open": "turn the faucet handle to open it",
    "hammer": "pick up the hammer and drive the nail in",
    "hand-insert": "move the block into the hole in the table",
    "handle-press": "press the handle down",
    "handle-press-side": "press the handle down from the side",
    "handle-pull": "pull the handle up",
    "handle-pull-side": "pull the handle up from the side",
    "lever-pull": "pull the lever up",
    "peg-insert-side": "pick up the peg and insert it into the hole from the side",
    "peg-unplug-side": "pull the peg out of the hole",
    "pick-out-of-hole": "pick the block up out of the hole",
    "pick-place": "pick up the block and place it at the goal",
    "pick-place-wall": "pick up the block and place it at the goal behind the wall",
    "plate-slide": "slide the plate into the goal",
    "plate-slide-back": "slide the plate back out of the goal",
    "plate-slide-back-side": "slide the plate back out of the goal from the side",
    "plate-slide-side": "slide the plate sideways into the goal",
    "push": "push the block to the goal",
    "push-back": "pull the block back to the goal",
    "push-wall": "push the block around the wall to the goal",
    "reach": "move the gripper to the goal",
    "reach-wall": "move the gripper over the wall to the goal",
    "shelf-place": "pick up the block and put it on the shelf",
    "soccer": "kick the ball into the goal",
    "stick-pull": "grab the stick and pull the container with it",
    "stick-push": "grab the stick and push the container with it",
    "sweep": "sweep the block off the table",
    "sweep-into": "sweep the block into the hole",
    "window-close": "slide the window closed",
    "window-open": "slide the window open",
}

# The paper's Table 2 rows (success rate: easy / middle / hard / average).
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "VPP": {"easy": 0.818, "middle": 0.493, "hard": 0.526, "average": 0.682},
    "GR-1": {"easy": 0.725, "middle": 0.327, "hard": 0.451, "average": 0.574},
    "SuSIE": {"easy": 0.560, "middle": 0.196, "hard": 0.255, "average": 0.410},
    "Diffusion Policy": {"easy": 0.442, "middle": 0.062, "hard": 0.095, "average": 0.279},
    "RT-1": {"easy": 0.605, "middle": 0.042, "hard": 0.015, "average": 0.346},
}
