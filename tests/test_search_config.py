"""Search configs from presets, TOML files and flags: round trips, named errors, the width."""

import subprocess
import sys
from pathlib import Path

import pytest

from evorl_nb.cli import main
from evorl_nb.evolve import (
    DEFAULT_WIDTH,
    ConfigError,
    EvolutionConfig,
    get_preset,
    parse_hurdle,
    preset_names,
    trainer_config,
)
from evorl_nb.runner import start
from evorl_nb.store import load_run


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_is_valid_and_round_trips_through_toml(name):
    config = get_preset(name).validate()
    again = EvolutionConfig.from_toml(config.to_toml())
    assert again == config
    # and through the stored (JSON) form a run keeps
    assert EvolutionConfig.from_dict(config.to_dict()) == config


def test_round_trip_keeps_none_hurdle_seed_run_and_trainer_tables():
    config = get_preset("quick", hurdle=None, seed_run="runs/x/run.sqlite", width=3,
                       trainer={"preset": "quick", "max_steps": 1234, "hidden": (8, 8)})
    text = config.to_toml()
    assert 'hurdle = "none"' in text and "[trainer]" in text
    assert EvolutionConfig.from_toml(text) == config


def test_the_default_width_is_the_measured_one_and_presets_use_it():
    assert EvolutionConfig().width == DEFAULT_WIDTH
    assert get_preset("dqnreg").width == get_preset("scratch").width == DEFAULT_WIDTH
    assert get_preset("quick").width == DEFAULT_WIDTH


def test_the_old_name_batch_still_means_the_width():
    """Runs saved, TOML files and keywords written before the rename keep working."""
    old = get_preset("ci").to_dict()
    old["batch"] = old.pop("width")
    assert EvolutionConfig.from_dict(dict(old, batch=5)).width == 5
    assert EvolutionConfig.from_toml("batch = 7\n").width == 7
    assert get_preset("ci", batch=3) == get_preset("ci", width=3)
    with pytest.raises(ConfigError, match="old name"):
        get_preset("ci", batch=3, width=4)
    # a run saved before several candidates trained at once had neither: one at a time
    del old["batch"]
    assert EvolutionConfig.from_dict(old).width == 1


def test_a_partial_file_overrides_only_its_fields():
    base = get_preset("quick")
    config = EvolutionConfig.from_toml('population = 40\ntournament = 4\n', base=base)
    assert (config.population, config.tournament) == (40, 4)
    assert config.replace(population=base.population, tournament=base.tournament) == base


@pytest.mark.parametrize("text, field", [
    ("populaton = 3", "populaton"),
    ("population = 0", "population"),
    ("population = 2.5", "population"),
    ("tournament = 500", "tournament"),
    ("candidates = -5", "candidates"),
    ('space = "sideways"', "space"),
    ('envs = ["CartPole-v0", "NoSuchEnv-v9"]', "envs"),
    ('envs = []', "envs"),
    ('hurdle = "Acrobot-v1:0.5"', "hurdle"),          # not one of the envs
    ('hurdle = "CartPole-v0:1.5"', "hurdle"),
    ('hurdle = "CartPole-v0"', "hurdle"),
    ('trainer = "fast"', "trainer"),
    ('[trainer]\npreset = "quick"\nmax_stepz = 3', "trainer.max_stepz"),
    ('[trainer]\npreset = "quick"\nlr = "high"', "trainer.lr"),
    ('seed_programs = ["dqn", "nope"]', "seed_programs"),
    ('window = "first10"', "window"),
    ("width = 0", "width"),
    ("population = [", "not valid TOML"),
])
def test_bad_configs_get_an_error_naming_the_field(text, field):
    with pytest.raises(ConfigError) as e:
        EvolutionConfig.from_toml(text, base=get_preset("quick"), source="my.toml")
    assert field in str(e.value) and "my.toml" in str(e.value)


def test_hurdle_parsing():
    assert parse_hurdle("CartPole-v0:0.6") == ("CartPole-v0", 0.6)
    assert parse_hurdle("none") is None and parse_hurdle("None") is None
    with pytest.raises(ConfigError):
        parse_hurdle("CartPole-v0:high")


def test_trainer_tables_resolve_to_dqn_configs():
    cfg = trainer_config({"preset": "quick", "max_steps": 30000, "hidden": [32, 32]})
    assert cfg.max_steps == 30000 and cfg.hidden == (32, 32) and cfg.lr == 1e-3


def test_cli_flags_override_the_file_which_overrides_the_preset(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text('population = 40\ntournament = 4\ncandidates = 99\n'
                 'envs = ["CartPole-v0", "Acrobot-v1"]\n')
    assert main(["evolve", "--preset", "quick", "--config", str(f), "--candidates", "50",
                 "--hurdle", "CartPole-v0:0.5", "--trainer", "ci", "--max-steps", "777",
                 "--print-config"]) == 0
    text = capsys.readouterr().out
    config = EvolutionConfig.from_toml(text)
    assert (config.population, config.tournament, config.candidates) == (40, 4, 50)
    assert config.envs == ("CartPole-v0", "Acrobot-v1")
    assert config.hurdle == ("CartPole-v0", 0.5)
    assert config.trainer == {"preset": "ci", "max_steps": 777}
    # the printed config is what --config reads back, unchanged
    g = tmp_path / "again.toml"
    g.write_text(text)
    assert main(["evolve", "--config", str(g), "--print-config"]) == 0
    assert capsys.readouterr().out == text


@pytest.mark.parametrize("argv, says", [
    (["--envs", "CartPole-v0", "Bogus-v1"], "Bogus-v1"),
    (["--hurdle", "MountainCar-v0:0.2"], "hurdle"),
    (["--population", "0"], "population"),
    (["--tournament", "100"], "tournament"),
    (["--config", "/no/such/file.toml"], "/no/such/file.toml"),
])
def test_cli_bad_config_exits_2_before_any_training(tmp_path, capsys, argv, says):
    out = tmp_path / "run"
    assert main(["evolve", "--preset", "ci", "--out", str(out), *argv]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()  # nothing was created, nothing trained


def test_resume_uses_the_stored_config(tmp_path):
    config = get_preset("ci", candidates=10, population=5, tournament=2, width=2)
    path = start(tmp_path / "run", config, seed=3, progress=False, verbose=False)
    assert EvolutionConfig.from_dict(load_run(path).config) == config


def test_print_config_works_from_the_shell():
    r = subprocess.run([sys.executable, "-m", "evorl_nb.cli", "evolve", "--preset", "scratch",
                        "--print-config"], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr
    assert EvolutionConfig.from_toml(r.stdout) == get_preset("scratch")
