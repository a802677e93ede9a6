"""Take a found loss home: a program written out as a standalone PyTorch function.

:func:`torch_source` writes a Python file that imports only ``torch`` and defines::

    def loss(q_net, target_net, obs, action, reward, next_obs, done, gamma=0.99,
             generator=None) -> torch.Tensor

returning the scalar ``Program.loss`` returns on the same batch, with the same gradients:
each line is the op table's own source line for that node (``Op.source``), so the guards
(division and log epsilons, the exp clamp) and the detach points (the target network runs
without gradient) are the ones evorl_nb trains with. Dead nodes are dropped, identical
sub-graphs are computed once, and random ops draw from ``generator`` in the order
``Program.per_transition`` does. Each line is named after the quantity it computes where it is a
familiar one (``q_sa``, ``y``, ``delta``) and carries that quantity's formula as a comment.

:func:`export` also writes a program's JSON file or its LaTeX equation.

>>> from evorl_nb import library
>>> "    q_sa = q_s.gather(" in torch_source(library.get("dqn"))
True
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from evorl_nb.inputs import INPUT_NAMES, N_INPUTS, TARGET
from evorl_nb.ops import OPS, Type

if TYPE_CHECKING:
    from evorl_nb.program import Program

__all__ = ["FORMATS", "torch_source", "latex_source", "export", "ExportError"]

FORMATS = ("torch", "json", "latex")
"""The formats :func:`export` writes."""

# what the exported function calls each program input
_INPUT_VARS = {"q": "q_net", "a_t": "action", "s_t": "obs", "q_targ": "target_net",
               "s_tp1": "next_obs", "r_t": "reward", "discount": "discount"}
_RANK = {Type.R: 1, Type.Z: 1, Type.LIST: 2, Type.P: 2, Type.V: 2}
_COMMENT_WIDTH = 60


class ExportError(ValueError):
    """A program that cannot be exported in the asked format."""


def _names(program: Program, var: list[str]) -> list[str | None]:
    """A readable variable name for each live node: the paper's quantity where it is one."""
    names: list[str | None] = list(var)
    used = set(var)
    grad = program.grad_nodes()
    y = None
    for i, n in enumerate(program.nodes, start=N_INPUTS):
        ins = [names[j] for j in n.inputs]
        name = None
        if n.op == "QValues":
            net = "q" if n.inputs[0] == 0 else ("qt" if n.inputs[0] == TARGET else None)
            state = {2: "s", 4: "next"}.get(n.inputs[1])
            name = f"{net}_{state}" if net and state else None
        elif n.op == "SelectList" and ins[0] == "q_s" and n.inputs[1] == 1:
            name = "q_sa"
        elif n.op in ("MaxList", "ArgMaxList", "MinList") and ins[0] and not ins[0].startswith("v"):
            name = f"{n.op[:-4].lower()}_{ins[0]}"
        elif n.op == "Add" and 5 in n.inputs and y is None and not grad[i]:
            name = "y"  # r_t + (something without gradient): a TD target
        elif n.op == "Subtract" and {ins[0], ins[1]} == {"q_sa", "y"}:
            name = "delta" if ins[0] == "q_sa" else "minus_delta"
        base = name or f"v{i}"
        name, k = base, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        names.append(name)
        if name == "y":
            y = i
    return names


def _comments(program: Program) -> list[str | None]:
    """Each graph index's formula in the paper's notation (δ, Y), None where sympy cannot say."""
    try:
        from evorl_nb import symbols
        from evorl_nb.symbolic import Y, node_expressions, notation, td_target

        exprs = node_expressions(program, guards=False)
        target = td_target(exprs[program.output])
        out: list[str | None] = []
        for i, e in enumerate(exprs):
            if e is None or i < N_INPUTS:
                out.append(None)
                continue
            short, _ = notation(e, target) if target is not None else (e, None)
            text = symbols.to_text(e if short == Y else short)
            if len(text) > _COMMENT_WIDTH:
                text = text[:_COMMENT_WIDTH - 1] + "…"
            out.append(text)
        return out
    except Exception:  # noqa: BLE001 - a formula is a comment: the loss still exports
        return [None] * (N_INPUTS + len(program.nodes))


def _header(program: Program, title: str, annotate: bool) -> str:
    """The module docstring; ``program`` is already pruned."""
    try:
        equation = program.equation() if annotate else program.equation(simplify=False)
    except Exception:  # noqa: BLE001 - the docstring falls back to the raw graph
        equation = "(sympy could not write this program)"
    from importlib.metadata import version  # the package's version, from its metadata

    return (f'"""{title}: a loss exported by evorl_nb {version("evorl_nb")}.\n\n'
            f"    L = mean over the batch of  {equation}\n\n"
            f"fingerprint: {program.fingerprint()}\n"
            f"graph: {program!r}\n\n"
            "Use it wherever a DQN loss is computed: ``loss(q_net, target_net, obs, action, "
            "reward,\nnext_obs, done, gamma)`` returns a scalar to ``.backward()``. "
            "``q_net`` and ``target_net`` map\nobservations [B, ...] to Q-values [B, A]; "
            "the target network runs without gradient.\n"
            "Only torch is needed; the file does not import evorl_nb.\n"
            '"""\n')


def torch_source(program: Program, name: str | None = None, *, annotate: bool = True) -> str:
    """The program as a standalone Python module defining ``loss(...)`` (see the module doc).

    ``annotate=False`` skips the sympy work (the simplified equation in the docstring and
    the per-line formula comments), for exporting many programs quickly; the code is the same.
    """
    program = program.prune()
    title = name or program.name or "evolved_loss"
    var = [_INPUT_VARS[n] for n in INPUT_NAMES]
    names = _names(program, var)
    notes = _comments(program) if annotate else [None] * (N_INPUTS + len(program.nodes))
    body = ["    discount = gamma * (1.0 - done.to(reward.dtype))  # γ (0 after a terminal step)"]
    memo: dict[Any, str] = {}
    alias: dict[int, str] = {}
    for i, n in enumerate(program.nodes, start=N_INPUTS):
        op = OPS[n.op]
        key = (n.op, tuple(alias.get(j, names[j]) for j in n.inputs), n.value)
        if not op.random and key in memo:  # identical sub-graphs are computed once
            alias[i] = memo[key]
            continue
        args = [alias.get(j, names[j]) for j in n.inputs]
        types = tuple(program.types[j] for j in n.inputs)
        if op.arity == 0:
            expr = op.code.format(like="reward", value=repr(float(n.value or 0.0)),
                                  generator="generator")
        else:
            if op.broadcast and len(args) == 2:
                ra, rb = (_RANK.get(t, 2) for t in types)
                if ra < rb:
                    args[0] += ".unsqueeze(-1)"
                elif rb < ra:
                    args[1] += ".unsqueeze(-1)"
            expr = op.source(types).format(**dict(zip(("x", "y"), args)))
        note = f"  # {notes[i]}" if notes[i] else ""
        if n.op == "QValues" and n.inputs[0] == TARGET:
            body.append("    with torch.no_grad():")
            body.append(f"        {names[i]} = {expr}{note}")
        else:
            body.append(f"    {names[i]} = {expr}{note}")
        memo[key] = names[i]
    out = alias.get(program.output, names[program.output])
    body.append(f"    return {out}.mean()")
    signature = ("def loss(q_net, target_net, obs, action, reward, next_obs, done, gamma=0.99,\n"
                 "         generator=None):\n")
    doc = ('    """The batch mean of the per-transition loss (a scalar with gradients in '
           "q_net's\n    parameters). ``generator`` (a torch.Generator) drives any random "
           'op."""\n')
    return (_header(program, title, annotate) + "\nimport torch\n\n\n" + signature + doc
            + "\n".join(body) + "\n")


def latex_source(program: Program) -> str:
    """The program's simplified loss as a LaTeX equation line."""
    try:
        return program.equation(latex=True) + "\n"
    except Exception as e:  # noqa: BLE001 - sympy's own errors, named for the user
        raise ExportError(f"cannot write this program as LaTeX: sympy failed "
                          f"({type(e).__name__}: {e})") from None


def export(program: Program, fmt: str = "torch", path: str | Path | None = None,
           name: str | None = None) -> str:
    """The program in format ``fmt`` (torch, json or latex); also written to ``path`` if given."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "torch":
        text = torch_source(program, name)
    elif fmt == "json":
        text = program.to_json(indent=2) + "\n"
    else:
        text = latex_source(program)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text
