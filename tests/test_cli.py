"""The command line as a researcher meets it: fast listing commands, a run's programs and
figures out of a run, evaluations that compare programs with confidence intervals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evorl_nb import library
from evorl_nb.cli import main
from evorl_nb.program import Program
from evorl_nb.rescore import ranked_program

DQNREG = Path(__file__).parent.parent / "docs" / "results" / "search" / "dqnreg"
"""The committed dqnreg search (8,000 candidates, re-scored): a real run to read."""

NO_TORCH = """
import sys
from evorl_nb.cli import main
code = main({argv!r})
heavy = sorted(m for m in ("torch", "pandas", "plotly", "ray") if m in sys.modules)
print("HEAVY", heavy, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("argv", [["--help"], ["programs"], ["envs"], ["program", "dqn_reg"],
                                  ["evolve", "--help"], ["program", "dqn", "--json"]])
def test_listing_commands_import_no_torch(argv):
    """What makes the command line start in well under a second (bench/bench_cli.py times
    it): commands that list or print import neither torch nor pandas nor plotly."""
    r = subprocess.run([sys.executable, "-c", NO_TORCH.format(argv=argv)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stderr, r.stderr


def test_program_from_a_run_by_rank_to_a_file(tmp_path, capsys):
    out = tmp_path / "second.json"
    assert main(["program", str(DQNREG), "--rank", "2", "-o", str(out)]) == 0
    assert "rank 2 by re-scored mean" in capsys.readouterr().err
    want, _ = ranked_program(DQNREG, 2)
    assert Program.from_json(out.read_text()) == want
    assert main(["program", str(out)]) == 0  # the file is a program every command reads
    text = capsys.readouterr().out
    assert want.equation() in text and "fingerprint" not in text
    assert main(["program", str(out), "--fingerprint"]) == 0
    assert f"fingerprint  {want.fingerprint()}" in capsys.readouterr().out
    # the packed store file itself names the run too, for every command that reads runs
    assert main(["program", str(DQNREG / "run.sqlite.gz"), "--rank", "2", "--json"]) == 0
    assert Program.from_json(capsys.readouterr().out) == want
    assert main(["program", "dqn", "--rank", "2"]) == 2
    assert "--rank picks a program from a run folder" in capsys.readouterr().err


def test_show_puts_the_seed_program_beside_the_top_and_explains_the_columns(capsys):
    assert main(["show", str(DQNREG), "--top", "3"]) == 0
    out = capsys.readouterr().out
    seed_line = next(line for line in out.splitlines() if line.startswith("seed"))
    assert "(the seed program dqn, same run)" in seed_line and "δ^2" in seed_line
    assert "key: fitness:" in out and "seen:" in out and "δ^2 = (Q(s_t, a_t) - Y)^2" in out
    assert main(["show", str(DQNREG), "--top", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["rank"] for row in data["top"]] == [1, 2, 3]
    assert data["top"][0]["fitness"] >= data["top"][1]["fitness"] >= data["top"][2]["fitness"]
    assert data["candidates"] == 8000 and data["space"] == "bootstrap"
    seed = data["seed_programs"][0]
    assert seed["name"] == "dqn" and seed["id"] == 1
    assert Program.from_json(seed["program"]).structural_hash() == \
        library.get("dqn").structural_hash()
    assert {r["entry"] for r in data["rescored"]} >= {"lib:dqn", "lib:dqn_reg"}


def test_plot_writes_a_page_with_the_figures_and_the_top_programs(tmp_path, capsys):
    page = tmp_path / "run.html"
    assert main(["plot", str(DQNREG), "-o", str(page), "--top", "4"]) == 0
    text = page.read_text()
    assert "Fitness of every candidate" in text and "Rates over the last" in text
    assert text.count("<tr>") == 1 + 4  # header and four programs
    assert "&lt;" not in text or "<code>" in text  # equations are escaped inside code cells
    assert main(["plot", str(DQNREG), "-o", str(tmp_path / "run.txt")]) == 2
    assert "must end in .html" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nothing"), "-o", str(page)]) == 2


def test_evaluate_trains_several_programs_and_seeds_at_once_and_compares_them(capsys):
    assert main(["evaluate", "--program", "dqn", "dqn_reg", "--env", "CartPole-v1",
                 "--preset", "ci", "--seeds", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted({(r["program"], r["seed"]) for r in data["runs"]}) == [
        (p, s) for p in ("dqn", "dqn_reg") for s in (0, 1, 2)]
    rows = {row["program"]: row for row in data["comparison"]}
    mean, half = rows["dqn"]["fitness"]
    scores = [r["score"] for r in data["runs"] if r["program"] == "dqn"]
    assert mean == pytest.approx(sum(scores) / 3) and half > 0
    diff, _ = rows["dqn_reg"]["vs_first"]
    theirs = [r["score"] for r in data["runs"] if r["program"] == "dqn_reg"]
    assert diff == pytest.approx((sum(theirs) - sum(scores)) / 3)
    assert "vs_first" not in rows["dqn"]
    assert main(["evaluate", "--program", "dqn", "dqn_reg", "--env", "CartPole-v1",
                 "--preset", "ci", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "mean ± 95% CI over 2 seeds" in out and "vs first" in out
    assert main(["evaluate", "--program", "dqn", "dqn", "--env", "CartPole-v1",
                 "--preset", "ci"]) == 2
    assert "names a loss twice" in capsys.readouterr().err


def test_a_finished_search_says_what_to_do_next():
    from evorl_nb.runner import next_steps

    text = next_steps("runs/x/run.sqlite")
    for command in ("evorl-nb show runs/x", "evorl-nb plot runs/x -o", "evorl-nb program runs/x "
                    "--rank 1 -o", "evorl-nb export runs/x --rank 1", "evorl-nb rescore runs/x"):
        assert command in text
    assert all(len(line) <= 100 for line in text.splitlines())


def test_the_public_api_is_importable_from_the_package_and_loads_torch_on_use():
    code = ("import sys, evorl_nb\n"
            "assert 'torch' not in sys.modules, 'import evorl_nb loaded torch'\n"
            "for name in evorl_nb.__all__:\n"
            "    assert getattr(evorl_nb, name) is not None, name\n"
            "from evorl_nb import train, Evolution, load_run, train_population\n"
            "assert train.__module__ == 'evorl_nb.dqn' and 'torch' in sys.modules\n"
            "assert set(evorl_nb.__all__) <= set(dir(evorl_nb))\n"
            "try:\n    evorl_nb.no_such_name\nexcept AttributeError as e:\n"
            "    assert 'no_such_name' in str(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
