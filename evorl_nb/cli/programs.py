"""The ``evorl-nb`` commands that list and print: ``programs``, ``envs``, ``program`` and
``export``, with how the command line reads a program (a library name, a JSON file, or a
run's N-th best).

None of them trains, so they stay fast: torch, pandas and plotly are imported only where a
command needs them (inside its function), never when this module loads.
"""

from __future__ import annotations

import sys
from pathlib import Path

from evorl_nb import library
from evorl_nb.program import Program, ProgramError


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


def cmd_programs(_args) -> int:
    """``evorl-nb programs``: each library program's name and equation."""
    width = max(map(len, library.names()))
    for name in library.names():
        print(f"{name:<{width}}  {library.get(name).equation()}")
    return 0


def cmd_program(args) -> int:
    """``evorl-nb program``: one program's equation, size and hashes, or its JSON (printed,
    or written with ``-o``)."""
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


def cmd_envs(_args) -> int:
    """``evorl-nb envs``: the registered environments with their Rmin, Rmax and budget."""
    from evorl_nb.envs import env_ids, get_spec

    print(f"{'env':<36} {'Rmin':>7} {'Rmax':>7}  budget")
    for env_id in env_ids():
        s = get_spec(env_id)
        budget = f"{s.budget_episodes} episodes" if s.budget_episodes else f"{s.budget_steps} steps"
        print(f"{env_id:<36} {s.rmin:>7g} {s.rmax:>7g}  {budget}")
    return 0


def cmd_export(args) -> int:
    """``evorl-nb export``: a program as a torch-only .py file, program JSON or LaTeX."""
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
