"""The ``evorl-nb`` commands on a search's run folder: ``evolve`` (with the layered search
config it runs), ``resume``, ``rescore``, ``show`` and ``plot``.

The runner, the trainer and the figures are imported inside each command, so loading this
module (which every ``evorl-nb`` call does) costs nothing for the listing commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


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
                                             "tournament", "width") if getattr(args, k) is not None}
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


def cmd_evolve(args) -> int:
    """``evorl-nb evolve``: start a search into a new run folder (or print its config)."""
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


def cmd_resume(args) -> int:
    """``evorl-nb resume``: continue a stopped or killed search where its store left off."""
    from evorl_nb.runner import resume

    resume(args.run, backend=args.backend, workers=args.workers, timeout=args.timeout,
           address=args.address, candidates=args.candidates, progress=not args.quiet)
    return 0


def cmd_rescore(args) -> int:
    """``evorl-nb rescore``: re-train a run's top programs, DQN and DQNReg on fresh seeds
    and print the ranking."""
    from evorl_nb.rescore import rescore
    from evorl_nb.runner import rescore_lines

    table = rescore(args.run, top=args.top, seeds=args.seeds, backend=args.backend,
                    workers=args.workers, timeout=args.timeout, address=args.address,
                    progress=not args.quiet)
    print("\n".join(rescore_lines(table, args.top)))
    return 0


def cmd_show(args) -> int:
    """``evorl-nb show``: a run's top programs and rates, as text or JSON."""
    from evorl_nb.runner import summary, summary_data

    if args.json:
        print(json.dumps(summary_data(args.run, k=args.top), indent=2, default=str))
    else:
        print(summary(args.run, k=args.top))
    return 0


def cmd_plot(args) -> int:
    """``evorl-nb plot``: a run's convergence figure (and top programs) written to a file."""
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
