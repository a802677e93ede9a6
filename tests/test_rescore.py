"""Re-scoring a run's winners on fresh seeds: storage, resume, ranking, the command line."""

import sqlite3

import numpy as np
import pytest

from evorl_nb import library
from evorl_nb.cli import main
from evorl_nb.evaluate import evaluate
from evorl_nb.evolve import get_preset, trainer_config
from evorl_nb.program import Program
from evorl_nb.rescore import FIRST_SEED, ranking, rescore
from evorl_nb.runner import start, summary
from evorl_nb.store import EVALUATED, RunStore, load_run


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    config = get_preset("ci", candidates=12, population=6, tournament=3, width=4)
    return start(tmp_path_factory.mktemp("rescore") / "run", config, seed=1, progress=False,
                 verbose=False)


def _copy(path, tmp_path):
    dst = tmp_path / "copy.sqlite"
    with sqlite3.connect(path) as src, sqlite3.connect(dst) as out:
        src.backup(out)
    return dst


def test_rescore_stores_one_row_per_program_env_and_fresh_seed(ci_run, tmp_path):
    path = _copy(ci_run, tmp_path)
    table = rescore(path, top=3, seeds=2, references=("dqn", "dqn_reg"), progress=False)
    data = load_run(path)
    best = data.best(3, distinct=True)
    entries = {f"id:{int(i)}" for i in best["id"]} | {"lib:dqn", "lib:dqn_reg"}
    rows = data.rescores
    assert set(rows["entry"]) == entries
    assert sorted(set(rows["seed"])) == [FIRST_SEED, FIRST_SEED + 1]  # never the eval seed 0
    assert len(rows) == len(entries) * 2 * len(data.config["envs"])
    assert not rows.duplicated(["entry", "env", "seed"]).any()
    assert set(table["entry"]) == entries and list(table["rank"]) == list(range(1, 6))
    assert (np.diff(table["mean"].to_numpy()) <= 0).all()  # ranked by re-scored mean
    # the stored score is what a plain evaluation of that program and seed gives
    r = rows[rows["entry"] == "lib:dqn_reg"].iloc[0]
    direct = evaluate(library.get("dqn_reg"), data.config["envs"],
                      trainer_config(data.config["trainer"]), seed=int(r["seed"]), hurdle=None)
    assert r["score"] == pytest.approx(direct.scores[r["env"]].score, abs=1e-6)


def test_rescore_resumes_without_retraining_what_is_stored(ci_run, tmp_path):
    path = _copy(ci_run, tmp_path)
    rescore(path, top=2, seeds=2, references=("dqn",), progress=False)
    before = load_run(path).rescores
    with sqlite3.connect(path) as conn:  # as if killed before these were written
        conn.execute("DELETE FROM rescores WHERE entry = 'lib:dqn' AND seed = ?",
                     (FIRST_SEED + 1,))
    rescore(path, top=2, seeds=2, references=("dqn",), progress=False)
    after = load_run(path).rescores
    assert len(after) == len(before)
    key = ["entry", "env", "seed"]
    kept = before[before["entry"] != "lib:dqn"].merge(after, on=key, suffixes=("", "_2"))
    # rows that were there were not re-trained: their wall times are the very same
    assert (kept["wall_time"] == kept["wall_time_2"]).all() and len(kept) > 0
    redone = after[(after["entry"] == "lib:dqn") & (after["seed"] == FIRST_SEED + 1)]
    old = before[(before["entry"] == "lib:dqn") & (before["seed"] == FIRST_SEED + 1)]
    assert redone["score"].tolist() == pytest.approx(old["score"].tolist(), abs=1e-6)
    # more seeds later: only the new seed is trained
    rescore(path, top=2, seeds=3, references=("dqn",), progress=False)
    assert len(load_run(path).rescores) == len(before) * 3 // 2


def _fake_rows(entry, scores, env="CartPole-v0"):
    prog = library.get("dqn") if entry == "lib:dqn" else library.get("dqn_reg")
    return [{"entry": entry, "candidate_id": None if entry.startswith("lib") else 1,
             "program": prog.to_json(), "fingerprint": prog.fingerprint(), "env": env,
             "seed": FIRST_SEED + i, "score": s, "failed": 0, "reason": None, "steps": 1,
             "wall_time": 0.0} for i, s in enumerate(scores)]


def test_ranking_marks_only_what_beats_dqn_outside_the_noise(ci_run, tmp_path):
    path = _copy(ci_run, tmp_path)
    with RunStore.open(path) as store:
        store.add_rescores(_fake_rows("lib:dqn", [0.50, 0.40, 0.60, 0.45, 0.55]))
        # always 0.1 above DQN on the same seed: a clear paired win
        store.add_rescores(_fake_rows("id:1", [0.60, 0.50, 0.70, 0.55, 0.65]))
        # higher on average, but as often below as above: noise
        store.add_rescores(_fake_rows("lib:dqn_reg", [0.80, 0.30, 0.75, 0.35, 0.60]))
    table = ranking(path).set_index("entry")
    assert table.loc["id:1", "beats_dqn"]
    assert table.loc["id:1", "vs_dqn"] == pytest.approx(0.1)
    assert not table.loc["lib:dqn_reg", "beats_dqn"]
    assert not table.loc["lib:dqn", "beats_dqn"]
    assert table.loc["lib:dqn_reg", "ci95"] > table.loc["id:1", "ci95"] > 0
    text = summary(path)
    assert "re-scored on 5 fresh seeds" in text and "*" in text
    statuses = load_run(path).candidates["status"]
    trained, evaluated = (statuses == "trained").sum(), statuses.isin(EVALUATED).sum()
    assert f"{evaluated} trained ({trained} past the hurdle)" in text


def test_cli_rescore_and_show(ci_run, tmp_path, capsys):
    path = _copy(ci_run, tmp_path)
    assert main(["rescore", str(path), "--top", "2", "--seeds", "2", "--backend",
                 "inprocess", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "lib:dqn" in out and "lib:dqn_reg" in out
    assert main(["show", str(path)]) == 0
    assert "re-scored on 2 fresh seeds" in capsys.readouterr().out
    assert main(["rescore", str(path), "--seeds", "0", "--backend", "inprocess"]) == 2
    assert "--seeds: 0 must be at least 1" in capsys.readouterr().err


def test_a_search_rescores_its_winners_at_the_end_when_asked(tmp_path):
    config = get_preset("ci", candidates=8, population=4, tournament=2, width=4)
    path = start(tmp_path / "run", config, seed=0, progress=False, verbose=False,
                 rescore={"top": 2, "seeds": 2, "references": ["dqn"]})
    rows = load_run(path).rescores
    assert set(rows["seed"]) == {FIRST_SEED, FIRST_SEED + 1}
    assert "lib:dqn" in set(rows["entry"])
    # a run started without it has no re-scores
    bare = start(tmp_path / "bare", config, seed=0, progress=False, verbose=False)
    assert load_run(bare).rescores.empty
    assert Program.from_json(rows["program"].iloc[0]).fingerprint() == rows["fingerprint"].iloc[0]
