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
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from evorl_nb import library
from evorl_nb.program import Program, ProgramError
from evorl_nb.store import StoreError


def load_program(spec: str) -> Program:
    """A library program by name, or a program JSON file by path."""
    if spec in library.names():
        return library.get(spec)
    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        from evorl_nb.program import MAX_JSON_CHARS

        try:
            if path.is_file() and path.stat().st_size > 4 * MAX_JSON_CHARS:
                raise ProgramError(f"{spec}: {path.stat().st_size:,} bytes is too large for a "
                                   f"program file (at most {MAX_JSON_CHARS:,} characters)")
            raw = path.read_bytes()
        except OSError as e:
            raise ProgramError(f"cannot read program file {spec!r}: {e.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProgramError(f"{spec}: not UTF-8 text (byte {e.start}), so not a program "
                               "JSON file") from None
        try:
            return Program.from_json(text)
        except ProgramError as e:
            raise ProgramError(f"{spec}: {e}") from None
    raise ProgramError(f"{spec!r} is neither a library program ({', '.join(library.names())}) "
                       "nor a program JSON file")


def _reproduce(args) -> int:
    from evorl_nb import reproduce
    from evorl_nb.envs import AmbiguousEnvError, MissingDependencyError, UnknownEnvError

    try:
        folder = reproduce.run(args.experiment, args.budget, args.out, seeds=args.seeds,
                               envs=tuple(args.envs) if args.envs else None,
                               algorithms=tuple(args.algorithms) if args.algorithms else None,
                               progress=not args.quiet, workers=args.workers)
    except (UnknownEnvError, AmbiguousEnvError, MissingDependencyError, KeyError) as e:
        print(f"evorl-nb reproduce: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    data = reproduce.load(folder)
    print(f"{args.experiment} ({args.budget}): {data['meta']['claim']}")
    if "summary" in data:
        print(f"{'algorithm':<12} {'env':<36} {'all episodes':>17} {'last 50':>17}")
        for _, r in data["summary"].iterrows():
            print(f"{r.algorithm:<12} {r.env:<36} {r.score_all:>7.3f} ± {r.ci95_all:<7.3f} "
                  f"{r.score_last50:>7.3f} ± {r.ci95_last50:<7.3f}")
    if args.experiment == "overestimation":
        print("\nQ(s_0) - realized discounted return, second half of training:")
        for _, r in reproduce.overestimation_bias(data).iterrows():
            print(f"{r.algorithm:<12} {r.env:<36} {r.bias:>+9.3f} ± {r.ci95:.3f}")
    if "cases" in data:
        print("\nfraction of transitions on the first branch (all / first 10% / second half):")
        for _, r in reproduce.case_summary(data).iterrows():
            print(f"{r.env:<36} {r.op.lower()}[{r['first']}, {r['second']}]\n"
                  f"{'':<36} {r.first_all:.3f} / {r.first_early:.3f} / {r.first_late:.3f}")
    if "table" in data:
        print(f"\n{'rank':>6} {'score':>6} {'proposed':>8}  simplified equation  [family]")
        for _, r in data["table"].iterrows():
            print(f"{r['rank']:>6} {r.score:>6.3f} {r.proposed:>8}  {r.simplified}  [{r.family}]")
    if not args.no_figures:
        try:
            from evorl_nb.viz.experiments import save_figures

            for path in save_figures(data):
                print(f"figure: {path}")
        except Exception as e:  # no Chromium or kaleido: the tables are still written
            print(f"evorl-nb reproduce: figures not exported ({type(e).__name__}: {e})",
                  file=sys.stderr)
    print(f"files in {folder}")
    return 0


def _programs(_args) -> int:
    width = max(map(len, library.names()))
    for name in library.names():
        print(f"{name:<{width}}  {library.get(name).equation()}")
    return 0


def _write(path: str, text: str) -> None:
    """Write ``text`` to the file ``path``; a ValueError naming it if it cannot be written."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot write {path!r}: {e.strerror}") from None


def _is_run(spec: str) -> bool:
    """True if ``spec`` names a run: a folder, or a run.sqlite(.gz) file."""
    path = Path(spec)
    return path.is_dir() or path.name.endswith((".sqlite", ".sqlite.gz"))


def _pick(spec: str, rank: int | None) -> tuple[Program, str | None]:
    """A program from a library name or JSON file, or the ``rank``-th of a run (default 1),
    with a line saying where that one ranks."""
    if not _is_run(spec):
        if rank is not None:
            raise ValueError(f"--rank picks a program from a run folder; {spec!r} is not one")
        return load_program(spec), None
    from evorl_nb.rescore import ranked_program

    return ranked_program(spec, 1 if rank is None else rank)


def _program(args) -> int:
    prog, how = _pick(args.program, args.rank)
    if args.out is not None:
        _write(args.out, prog.to_json(indent=2) + "\n")
        print(f"wrote {args.out}" + (f" ({how})" if how else ""), file=sys.stderr)
        return 0
    if args.json:
        print(prog.to_json(indent=2))
        return 0
    print(f"program      {prog.name or args.program}")
    if how:
        print(f"from         {how}")
    print(f"equation     {prog.equation(latex=args.latex)}")
    print(f"exact        {prog.to_sympy()}")
    print(f"nodes        {len(prog.nodes)} ({len(prog.prune().nodes)} live)")
    print(f"structure    {prog.structural_hash()}")
    if args.fingerprint:
        print(f"fingerprint  {prog.fingerprint()}")
    return 0


def _envs(_args) -> int:
    from evorl_nb.envs import env_ids, get_spec

    print(f"{'env':<36} {'Rmin':>7} {'Rmax':>7}  budget")
    for env_id in env_ids():
        s = get_spec(env_id)
        budget = f"{s.budget_episodes} episodes" if s.budget_episodes else f"{s.budget_steps} steps"
        print(f"{env_id:<36} {s.rmin:>7g} {s.rmax:>7g}  {budget}")
    return 0


def _evaluate(args) -> int:
    from evorl_nb.evaluate import evaluate_batch
    from evorl_nb.stats import ci95, paired_ci95

    progs = [load_program(spec) for spec in args.program]
    names = [p.name or spec for p, spec in zip(progs, args.program, strict=True)]
    if len(set(names)) < len(names):
        raise ValueError(f"--program names a loss twice: {', '.join(names)}")
    hurdle = None if args.hurdle is None else (args.hurdle, args.hurdle_threshold)
    seeds = list(range(args.seed, args.seed + args.seeds))
    jobs = [(k, seed) for k in range(len(progs)) for seed in seeds]
    progress = args.progress or (not args.json and sys.stderr.isatty() and not args.quiet)
    # every program and seed trains at once on the population trainer (one batch per env)
    results = evaluate_batch([progs[k] for k, _ in jobs], args.env, args.preset,
                             seeds=seeds * len(progs), hurdle=hurdle, window=args.window,
                             progress=progress)
    runs = []
    for (k, seed), r in zip(jobs, results, strict=True):
        for env_id, sc in r.scores.items():
            runs.append({"program": names[k], "env": env_id, "seed": seed,
                         "score": sc.score, "score_all": sc.score_all,
                         "score_last50": sc.score_last50, "episodes": len(sc.run.episodes),
                         "steps": sc.run.steps, "wall_time": round(sc.run.wall_time, 2),
                         "failed": sc.run.failed, "reason": sc.run.reason,
                         "last_return": float(sc.run.returns[-1]) if sc.run.episodes else None,
                         "fitness": r.fitness})
        if r.stopped:
            runs[-1]["stopped"] = r.stopped
    envs = list(dict.fromkeys(r["env"] for r in runs))
    fitness = {k: [r.fitness for (j, _), r in zip(jobs, results, strict=True) if j == k]
               for k in range(len(progs))}  # per program, in seed order
    table = []
    for k, name in enumerate(names):
        row = {"program": name}
        for env_id in envs:
            row[env_id] = ci95([r["score"] for r in runs
                                if r["program"] == name and r["env"] == env_id])
        row["fitness"] = ci95(fitness[k])
        if k > 0:
            row["vs_first"] = paired_ci95(fitness[k], fitness[0])
        table.append(row)
    if args.json:
        print(json.dumps({"programs": {n: p.to_dict() for n, p in zip(names, progs, strict=True)},
                          "preset": args.preset, "window": args.window, "runs": runs,
                          "comparison": table}, indent=2))
        return 0
    for name, prog in zip(names, progs, strict=True):
        print(f"{name}: {prog.equation()}")
    print(f"preset {args.preset}; score = normalized return (0 = Rmin, 1 = Rmax) averaged over "
          f"{'all' if args.window == 'all' else 'the last 50'} training episodes")
    width = max(34, *map(len, envs))
    pw = max(7, *map(len, names))
    print(f"{'program':<{pw}} {'env':<{width}} {'seed':>4} {'score':>6} {'episodes':>8} "
          f"{'steps':>7} {'secs':>6}  note")
    for r in runs:
        note = r["reason"] or r.get("stopped") or ""
        print(f"{r['program']:<{pw}} {r['env']:<{width}} {r['seed']:>4} {r['score']:>6.3f} "
              f"{r['episodes']:>8} {r['steps']:>7} {r['wall_time']:>6.1f}  {note}")
    n = len(seeds)
    print(f"\nmean ± 95% CI over {n} seed{'s' if n > 1 else ''} (no interval from one seed)"
          + ("; vs first = paired difference of the fitness to the first program, * where it "
             "is outside the noise" if len(progs) > 1 else ""))

    def cell(m, h) -> str:
        return f"{m:.3f}" if h != h else f"{m:.3f} ± {h:.3f}"

    cols = [*envs, "fitness"] + (["vs first"] if len(progs) > 1 else [])
    cw = {c: max(len(c), 15) for c in cols}
    print(f"{'program':<{pw}} " + " ".join(f"{c:>{cw[c]}}" for c in cols))
    for row in table:
        cells = [cell(*row[e]) for e in envs] + [cell(*row["fitness"])]
        if len(progs) > 1:
            d = row.get("vs_first")
            if d is None:
                cells.append("")
            elif d[1] != d[1]:  # one seed: no interval
                cells.append(f"{d[0]:+.3f} ")
            else:
                cells.append(f"{d[0]:+.3f} ± {d[1]:.3f}" + ("*" if abs(d[0]) > d[1] else " "))
        print(f"{row['program']:<{pw}} " + " ".join(f"{v:>{cw[c]}}"
                                                    for v, c in zip(cells, cols, strict=True)))
    return 0


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


def search_config(args):
    """The effective search config of ``evorl-nb evolve``'s arguments: the ``--preset``,
    then the ``--config`` TOML file's fields, then the flags (each layer overrides the
    last); validated, so a bad field fails before any training."""
    from evorl_nb.evolve import ConfigError, get_preset, parse_hurdle

    config = get_preset(args.preset)
    if args.config is not None:
        try:
            text = Path(args.config).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {args.config!r}: "
                              f"{getattr(e, 'strerror', None) or e}") from None
        config = type(config).from_toml(text, base=config, source=args.config)
    changes = {k: getattr(args, k) for k in ("candidates", "space", "population",
                                             "tournament", "batch") if getattr(args, k) is not None}
    if args.envs is not None:
        changes["envs"] = tuple(args.envs)
    if args.hurdle is not None:
        changes["hurdle"] = parse_hurdle(args.hurdle)
    if args.seed_run is not None:
        from evorl_nb.store import store_path

        changes["seed_run"] = str(store_path(args.seed_run))
    if args.trainer is not None or args.max_steps is not None:
        trainer = config.trainer if args.trainer is None else args.trainer
        trainer = dict(trainer) if isinstance(trainer, dict) else {"preset": trainer}
        if args.max_steps is not None:
            trainer["max_steps"] = args.max_steps
        changes["trainer"] = trainer if len(trainer) > 1 else trainer["preset"]
    return config.replace(**changes).validate()


def _evolve(args) -> int:
    from evorl_nb.runner import start

    config = search_config(args)
    if args.print_config:
        print(config.to_toml(), end="")
        return 0
    if args.out is None:
        raise ValueError("evolve needs --out FOLDER (the run folder to create), or "
                         "--print-config")
    start(args.out, config, seed=args.seed, backend=args.backend, workers=args.workers,
          timeout=args.timeout, address=args.address, progress=not args.quiet,
          rescore=None if args.no_rescore else {})
    return 0


def _resume(args) -> int:
    from evorl_nb.runner import resume

    resume(args.run, backend=args.backend, workers=args.workers, timeout=args.timeout,
           address=args.address, candidates=args.candidates, progress=not args.quiet)
    return 0


def _rescore(args) -> int:
    from evorl_nb.rescore import rescore
    from evorl_nb.runner import rescore_lines

    table = rescore(args.run, top=args.top, seeds=args.seeds, backend=args.backend,
                    workers=args.workers, timeout=args.timeout, address=args.address,
                    progress=not args.quiet)
    print("\n".join(rescore_lines(table, args.top)))
    return 0


def _export(args) -> int:
    from evorl_nb.export import export

    source = Path(args.source)
    program, how = _pick(args.source, args.rank)
    if how is not None:
        run_name = source.resolve().name if source.is_dir() else source.name.split(".")[0]
        name = args.name or f"{run_name}_rank{1 if args.rank is None else args.rank}"
    else:
        name = args.name or program.name or source.stem
    text = export(program, args.format, name=name)
    if args.out is None:
        print(text, end="")
    else:
        _write(args.out, text)
        print(f"wrote {args.out} ({args.format}" + (f"; {how}" if how else "") + ")",
              file=sys.stderr)
    return 0


def _show(args) -> int:
    from evorl_nb.runner import summary, summary_data

    if args.json:
        print(json.dumps(summary_data(args.run, k=args.top), indent=2, default=str))
    else:
        print(summary(args.run, k=args.top))
    return 0


def _plot(args) -> int:
    from evorl_nb.store import load_run, store_path
    from evorl_nb.viz.evolution import save_run_figure

    data = load_run(store_path(args.run))  # a named error for a missing or damaged run first
    try:
        path = save_run_figure(data, args.out, k=args.top)
    except OSError as e:
        raise ValueError(f"cannot write {args.out!r}: {e.strerror or e}") from None
    except RuntimeError as e:  # kaleido without Chromium
        raise ValueError(f"cannot export {args.out!r} as an image: {e} (write .html "
                         "instead, or install Chromium)") from None
    print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``evorl-nb`` command."""
    from evorl_nb.export import FORMATS
    from evorl_nb.presets import budget_names, preset_names, preset_summaries
    from evorl_nb.presets import config_names as trainer_names

    title = __doc__.split("\n")[0].replace("``", "")  # no reStructuredText marks in --help
    parser = argparse.ArgumentParser(prog="evorl-nb", description=title)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("programs", help="list the library programs").set_defaults(func=_programs)
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
    p.set_defaults(func=_program)
    sub.add_parser("envs", help="list the registered environments").set_defaults(func=_envs)
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
    e.set_defaults(func=_evaluate)
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
    v.add_argument("--batch", type=_count, default=None,
                   help="candidates each worker trains at once (population trainer; a "
                        "finished candidate's slot gets the next child at once); 1 trains "
                        "them one at a time (default: the preset's)")
    v.add_argument("--space", default=None, choices=["bootstrap", "scratch"],
                   help="override the search space")
    v.add_argument("--seed-run", default=None,
                   help="start the population from the best programs of this saved run")
    v.add_argument("--no-rescore", action="store_true",
                   help="skip re-scoring the top programs on fresh seeds at the end")
    _backend_args(v)
    v.set_defaults(func=_evolve)
    r = sub.add_parser("resume", help="continue a stopped or killed search")
    r.add_argument("run", help="run folder (or its run.sqlite)")
    r.add_argument("--candidates", type=_count, default=None, help="raise the candidate budget")
    _backend_args(r)
    r.set_defaults(func=_resume)
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
    x.set_defaults(func=_reproduce)
    q = sub.add_parser("rescore", help="re-train a run's top programs, DQN and DQNReg on "
                       "fresh seeds (resumable; stored in the run)")
    q.add_argument("run", help="run folder (or its run.sqlite)")
    q.add_argument("--top", type=_count, default=20, help="distinct programs (default 20)")
    q.add_argument("--seeds", type=_count, default=5, help="fresh seeds each (default 5)")
    _backend_args(q)
    q.set_defaults(func=_rescore)
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
    o.set_defaults(func=_export)
    w = sub.add_parser("show", help="top programs and rates of a run, beside its seed program")
    w.add_argument("run", help="run folder (or its run.sqlite)")
    w.add_argument("--top", type=_count, default=10, help="how many programs (default 10)")
    w.add_argument("--json", action="store_true",
                   help="machine-readable: rates, top programs (with their JSON), the seed "
                        "programs' scores and the re-scored ranking")
    w.set_defaults(func=_show)
    g = sub.add_parser("plot", help="write a run's convergence figure and top programs to a "
                       "file (.html, or .png/.svg/.pdf: the fitness figure)")
    g.add_argument("run", help="run folder (or its run.sqlite)")
    g.add_argument("-o", "--out", required=True, metavar="FILE",
                   help="FILE.html: a page with the fitness and rate figures and the top "
                        "programs; FILE.png/.svg/.pdf: the fitness figure (needs Chromium)")
    g.add_argument("--top", type=_count, default=10, help="programs in the table (default 10)")
    g.set_defaults(func=_plot)
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


if __name__ == "__main__":
    sys.exit(main())
