"""The ``evorl-nb`` commands that train agents and print their scores: ``evaluate``
(programs side by side, with confidence intervals) and ``reproduce`` (one of the paper's
experiments at a budget).

The trainer, pandas and the figures are imported inside each command, so loading this
module (which every ``evorl-nb`` call does) imports no torch.
"""

from __future__ import annotations

import json
import sys

from evorl_nb.cli.programs import load_program


def cmd_evaluate(args) -> int:
    """``evorl-nb evaluate``: train DQN agents with each program's loss on every seed at
    once and compare their scores (mean ± 95% CI, paired to the first program)."""
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


def cmd_reproduce(args) -> int:
    """``evorl-nb reproduce``: run one of the paper's experiments at a budget and print
    its tables (and export its figures)."""
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
