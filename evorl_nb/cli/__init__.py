"""The ``evorl-nb`` command line.

    evorl-nb programs                 list the library programs and their equations
    evorl-nb program dqn_reg          show one program (a library name or a JSON file)
    evorl-nb program my.json --json   print it as program JSON
    evorl-nb evaluate --program dqn_reg --env CartPole-v1 --preset quick --seeds 3
    evorl-nb envs                     list the registered environments
    evorl-nb evolve --preset quick --out runs/NAME [--backend local --workers 2]
    evorl-nb evolve --preset dqnreg --print-config > my.toml   (edit, then --config my.toml)
    evorl-nb resume runs/NAME         continue a stopped or killed search
    evorl-nb rescore runs/NAME        re-train the top programs, DQN, DQNReg on fresh seeds
    evorl-nb show runs/NAME           top programs and duplicate / hurdle / failure rates
    evorl-nb export dqn_reg -o dqn_reg_loss.py    a loss as a torch-only .py file (or --format
                                  json / latex; a run folder with --rank N picks its Nth best)
    evorl-nb reproduce training --budget quick   a paper experiment, docs/results/reproduce/quick

This module builds the parser and runs a command (:func:`main`); the commands live in
:mod:`evorl_nb.cli.programs` (list and print: programs, program, envs, export),
:mod:`evorl_nb.cli.search` (a run folder: evolve, resume, rescore, show, plot) and
:mod:`evorl_nb.cli.training` (train and compare: evaluate, reproduce). Each imports torch,
pandas or plotly only inside a command that needs them, so the listing commands start fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from evorl_nb.cli.programs import cmd_envs, cmd_export, cmd_program, cmd_programs, load_program
from evorl_nb.cli.search import (
    cmd_evolve,
    cmd_plot,
    cmd_rescore,
    cmd_resume,
    cmd_show,
    search_config,
)
from evorl_nb.cli.training import cmd_evaluate, cmd_reproduce
from evorl_nb.program import ProgramError
from evorl_nb.store import StoreError

__all__ = ["main", "load_program", "search_config"]


def _checked(cast, ok, rule: str):
    """An argparse type: ``cast`` the text, then refuse values ``ok`` rejects, saying ``rule``."""
    noun = "a whole number" if cast is int else "a number"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} {rule}")
        return value

    parse.__name__ = rule  # argparse names the type in its messages
    return parse


_count = _checked(int, lambda v: v >= 1, "must be at least 1")
"""A whole number >= 1 (seeds, candidates, workers, sizes)."""
_natural = _checked(int, lambda v: v >= 0, "must not be negative")
"""A whole number >= 0 (a seed)."""
_seconds = _checked(float, lambda v: 0 < v < float("inf"), "must be a positive number of seconds")
"""A finite number of seconds > 0."""
_unit = _checked(float, lambda v: 0.0 <= v <= 1.0, "must be a normalized score in [0, 1]")
"""A normalized score in [0, 1]."""


def _backend_args(p) -> None:
    p.add_argument("--backend", default="local", choices=["inprocess", "local", "ray"],
                   help="where candidates train (default: local worker processes)")
    p.add_argument("--workers", type=_count, default=None,
                   help="parallel workers (default: cores)")
    p.add_argument("--timeout", type=_seconds, default=None,
                   help="seconds before a candidate's worker counts as hung (retried once)")
    p.add_argument("--address", default=None, help="Ray cluster address: auto or HOST:PORT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``evorl-nb`` command."""
    from evorl_nb.export import FORMATS
    from evorl_nb.presets import budget_names, preset_names, preset_summaries
    from evorl_nb.presets import config_names as trainer_names

    title = __doc__.split("\n")[0].replace("``", "")  # no reStructuredText marks in --help
    parser = argparse.ArgumentParser(prog="evorl-nb", description=title)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("programs", help="list the library programs").set_defaults(func=cmd_programs)
    p = sub.add_parser("program", help="show a program (library name, JSON file or a run's "
                       "N-th best) or write it to a file")
    p.add_argument("program", help="a library name (see `evorl-nb programs`), a .json file, "
                                   "or a run folder")
    p.add_argument("--rank", type=_count, default=None,
                   help="with a run folder: which program, 1 = best by re-scored mean (by "
                        "search fitness if the run was not re-scored); default 1")
    p.add_argument("-o", "--out", default=None, metavar="FILE.json",
                   help="write the program JSON to FILE (readable by every command)")
    p.add_argument("--json", action="store_true", help="print the program JSON")
    p.add_argument("--latex", action="store_true", help="print the equation as LaTeX")
    p.add_argument("--fingerprint", action="store_true",
                   help="also print the functional fingerprint (runs the program on the "
                        "probes, so it loads torch: about a second)")
    p.set_defaults(func=cmd_program)
    sub.add_parser("envs", help="list the registered environments").set_defaults(func=cmd_envs)
    e = sub.add_parser("evaluate", help="train DQN agents with programs' losses and compare "
                       "their scores")
    e.add_argument("--program", required=True, nargs="+", action="extend", metavar="PROGRAM",
                   help="library name(s) or program JSON file(s); every program and seed "
                        "trains at once (the population trainer)")
    e.add_argument("--env", nargs="+", required=True, help="environment id(s), e.g. CartPole-v1")
    e.add_argument("--preset", default="quick", choices=trainer_names(),
                   help="trainer preset (default quick)")
    e.add_argument("--seeds", type=_count, default=1, help="number of seeds (default 1)")
    e.add_argument("--seed", type=_natural, default=0, help="first seed (default 0)")
    e.add_argument("--window", default="all", choices=["all", "last50"],
                   help="score over all episodes (paper) or the last 50 (authors' code)")
    e.add_argument("--hurdle", default=None,
                   help="hurdle env, evaluated first (default: none; the paper's is CartPole-v0)")
    e.add_argument("--hurdle-threshold", type=_unit, default=0.6, help="hurdle score (0.6)")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.add_argument("--progress", action="store_true",
                   help="show progress bars even when stderr is not a terminal")
    e.add_argument("--quiet", action="store_true", help="no progress bars on a terminal")
    e.set_defaults(func=cmd_evaluate)
    v = sub.add_parser("evolve", help="run a search (regularized evolution) into a run folder",
                       description="Run a search. The config is the --preset, then the "
                       "--config file's fields, then the flags; --print-config shows it.")
    v.add_argument("--preset", default="quick", choices=preset_names(),
                   help="search preset (default quick): " + "; ".join(
                       f"{k}: {d}" for k, d in preset_summaries().items()))
    v.add_argument("--config", default=None, metavar="FILE.toml",
                   help="EvolutionConfig fields in TOML over the preset (see --print-config)")
    v.add_argument("--print-config", action="store_true",
                   help="print the effective config as TOML (readable by --config) and exit")
    v.add_argument("--out", default=None, help="run folder to create, e.g. runs/my-search")
    v.add_argument("--seed", type=_natural, default=0, help="search seed (default 0)")
    v.add_argument("--candidates", type=_count, default=None, help="candidates to record in all")
    v.add_argument("--population", type=_count, default=None, help="population size")
    v.add_argument("--tournament", type=_count, default=None, help="tournament size")
    v.add_argument("--envs", nargs="+", default=None, metavar="ENV",
                   help="fitness environments (see `evorl-nb envs`)")
    v.add_argument("--hurdle", default=None, metavar="ENV:THRESHOLD",
                   help="hurdle env and normalized score, evaluated first (or none)")
    v.add_argument("--trainer", default=None, choices=trainer_names(),
                   help="trainer preset of each candidate's DQN runs")
    v.add_argument("--max-steps", type=_count, default=None,
                   help="cap on each training run's environment steps")
    v.add_argument("--width", "--batch", dest="width", type=_count, default=None,
                   help="candidates each worker trains at once (population trainer; a "
                        "finished candidate's slot gets the next child at once); 1 trains "
                        "them one at a time (default: the preset's; --batch is its old name)")
    v.add_argument("--space", default=None, choices=["bootstrap", "scratch"],
                   help="override the search space")
    v.add_argument("--seed-run", default=None,
                   help="start the population from the best programs of this saved run")
    v.add_argument("--no-rescore", action="store_true",
                   help="skip re-scoring the top programs on fresh seeds at the end")
    _backend_args(v)
    v.set_defaults(func=cmd_evolve)
    r = sub.add_parser("resume", help="continue a stopped or killed search")
    r.add_argument("run", help="run folder (or its run.sqlite)")
    r.add_argument("--candidates", type=_count, default=None, help="raise the candidate budget")
    _backend_args(r)
    r.set_defaults(func=cmd_resume)
    x = sub.add_parser("reproduce", help="run one of the paper's experiments at a budget")
    x.add_argument("experiment", help="training, generalization, overestimation, "
                                      "clipped_cases, search or scratch")
    x.add_argument("--budget", default="ci", choices=budget_names(),
                   help="ci (seconds), quick (this machine), long (the quick network for the "
                        "paper's step budgets), paper (the paper's settings)")
    x.add_argument("--out", default=None,
                   help="results folder (default docs/results/reproduce/BUDGET)")
    x.add_argument("--seeds", type=_count, default=None, help="override the budget's seeds")
    x.add_argument("--envs", nargs="+", default=None, help="override the experiment's envs")
    x.add_argument("--algorithms", nargs="+", default=None,
                   help="override the experiment's losses (library names or program .json files)")
    x.add_argument("--workers", type=_count, default=None,
                   help="worker processes of a search (default: one per core)")
    x.add_argument("--no-figures", action="store_true", help="skip the PNG export")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(func=cmd_reproduce)
    q = sub.add_parser("rescore", help="re-train a run's top programs, DQN and DQNReg on "
                       "fresh seeds (resumable; stored in the run)")
    q.add_argument("run", help="run folder (or its run.sqlite)")
    q.add_argument("--top", type=_count, default=20, help="distinct programs (default 20)")
    q.add_argument("--seeds", type=_count, default=5, help="fresh seeds each (default 5)")
    _backend_args(q)
    q.set_defaults(func=cmd_rescore)
    o = sub.add_parser("export", help="write a program as a standalone PyTorch loss file, "
                       "program JSON or LaTeX")
    o.add_argument("source", help="a library name, a program .json file, or a run folder")
    o.add_argument("--format", default="torch", choices=FORMATS,
                   help="torch: a .py file defining loss(q_net, target_net, obs, action, "
                        "reward, next_obs, done, gamma) that needs only torch (default)")
    o.add_argument("-o", "--out", default=None, metavar="FILE",
                   help="file to write (default: print to stdout)")
    o.add_argument("--rank", type=_count, default=None,
                   help="with a run folder: which program, 1 = best by re-scored mean "
                        "(by search fitness if the run was not re-scored); default 1")
    o.add_argument("--name", default=None, help="the loss's title in the file's docstring")
    o.set_defaults(func=cmd_export)
    w = sub.add_parser("show", help="top programs and rates of a run, beside its seed program")
    w.add_argument("run", help="run folder (or its run.sqlite)")
    w.add_argument("--top", type=_count, default=10, help="how many programs (default 10)")
    w.add_argument("--json", action="store_true",
                   help="machine-readable: rates, top programs (with their JSON), the seed "
                        "programs' scores and the re-scored ranking")
    w.set_defaults(func=cmd_show)
    g = sub.add_parser("plot", help="write a run's convergence figure and top programs to a "
                       "file (.html, or .png/.svg/.pdf: the fitness figure)")
    g.add_argument("run", help="run folder (or its run.sqlite)")
    g.add_argument("-o", "--out", required=True, metavar="FILE",
                   help="FILE.html: a page with the fitness and rate figures and the top "
                        "programs; FILE.png/.svg/.pdf: the fitness figure (needs Chromium)")
    g.add_argument("--top", type=_count, default=10, help="programs in the table (default 10)")
    g.set_defaults(func=cmd_plot)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or argparse's refusal of a flag (2, message printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args)
    except (ProgramError, KeyError, ValueError, StoreError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"evorl-nb: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly, as shell tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return 1
    except OSError as e:  # a path that cannot be read or written (--out under a file, ...)
        where = f" {e.filename!r}" if e.filename else ""
        print(f"evorl-nb: error: cannot use{where}: {e.strerror or e}", file=sys.stderr)
        return 2

