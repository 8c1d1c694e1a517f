"""vpp-robot eval compare: paired comparison of seeded evaluations against a baseline."""

import json

import pytest

from vpp.robots.cli import main
from vpp.robots.compare import EvaluationFileError, compare, exact_mcnemar


def write_grasp(folder, outcomes, first_seed=1000):
    folder.mkdir(parents=True)
    rollouts = [{"seed": first_seed + i, "grasped": ok} for i, ok in enumerate(outcomes)]
    (folder / "grasp_eval.json").write_text(json.dumps({"grasped": sum(outcomes), "rollouts": rollouts}))
    return folder


def write_metaworld(folder, outcomes):
    folder.mkdir(parents=True)
    episodes = [
        {"task": task, "index": i, "success": ok}
        for task, row in outcomes.items()
        for i, ok in enumerate(row)
    ]
    (folder / "results.json").write_text(json.dumps({"episodes": episodes}))
    return folder


def test_exact_mcnemar_matches_the_binomial_tail():
    assert exact_mcnemar(0, 0) == 1.0
    # 6 discordant pairs all one way: 2 * 0.5**6
    assert exact_mcnemar(6, 0) == pytest.approx(2 / 64)
    assert exact_mcnemar(7, 2) == pytest.approx(2 * (1 + 9 + 36) / 512)
    assert exact_mcnemar(3, 3) == 1.0


def test_a_variant_is_paired_with_the_baseline_start_by_start(tmp_path):
    base = write_grasp(tmp_path / "fp32", [True] * 98 + [False] * 2)
    # loses six starts the baseline solved, gains none: outside the baseline's interval
    worse = write_grasp(tmp_path / "int8", [False] * 6 + [True] * 92 + [False] * 2)
    # loses one, gains both the baseline missed
    same = write_grasp(tmp_path / "dyn", [False] + [True] * 99)
    rows = compare([("fp32", base), ("int8", worse), ("dyn", same)])
    assert [(r.name, r.successes, r.episodes) for r in rows] == [
        ("fp32", 98, 100),
        ("int8", 92, 100),
        ("dyn", 99, 100),
    ]
    assert rows[0].against_baseline_ci == "inside" and rows[0].mcnemar_p == 1.0
    assert rows[1].against_baseline_ci == "below" and not rows[1].at_parity
    assert (rows[1].only_baseline, rows[1].only_this) == (6, 0)
    assert rows[1].mcnemar_p == pytest.approx(2 / 64)
    assert rows[2].against_baseline_ci == "inside" and rows[2].at_parity
    assert (rows[2].only_baseline, rows[2].only_this) == (1, 2)
    # above the interval (96/100: [0.90, 0.98]) is reported, and is not a loss of parity
    lower = write_grasp(tmp_path / "fp32-96", [True] * 96 + [False] * 4)
    better = compare([("fp32", lower), ("dyn", same)])[1]
    assert better.against_baseline_ci == "above" and better.at_parity


def test_metaworld_episodes_pair_by_task_and_index(tmp_path):
    base = write_metaworld(tmp_path / "a", {"reach": [True, False], "push": [False, False]})
    other = write_metaworld(tmp_path / "b", {"reach": [False, True], "push": [False, True]})
    rows = compare([("a", base), ("b", other)])
    assert (rows[1].successes, rows[1].shared, rows[1].only_baseline, rows[1].only_this) == (2, 4, 1, 2)


def test_bad_inputs_are_refused_with_what_to_fix(tmp_path, capsys):
    with pytest.raises(EvaluationFileError, match=r"holds neither grasp_eval\.json"):
        compare([("x", tmp_path)])
    base = write_grasp(tmp_path / "base", [True, False])
    elsewhere = write_grasp(tmp_path / "other-seeds", [True, True], first_seed=5000)
    with pytest.raises(ValueError, match="shares no start with the baseline"):
        compare([("base", base), ("other", elsewhere)])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "grasp_eval.json").write_text("{")
    with pytest.raises(EvaluationFileError, match="not an evaluation this tool reads"):
        compare([("broken", broken)])
    assert main(["eval", "compare", f"base={base}", str(elsewhere)]) == 2
    assert "expected NAME=FOLDER" in capsys.readouterr().err


def test_the_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    base = write_grasp(tmp_path / "fp32", [True] * 18 + [False] * 2)
    variant = write_grasp(tmp_path / "int8", [True] * 15 + [False] * 5)
    out = tmp_path / "comparison.json"
    assert main(["eval", "compare", f"fp32={base}", f"int8={variant}", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| int8 | 15/20 |" in text and "against the baseline's 95%" in text
    saved = json.loads(out.read_text())
    assert [row["name"] for row in saved] == ["fp32", "int8"] and saved[1]["only_baseline"] == 3
