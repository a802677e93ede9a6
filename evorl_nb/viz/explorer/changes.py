"""What a mutation did to a program, for the program explorer: :class:`Change` (the parent,
the child, the nodes that changed, joined or left the loss, and whether the loss is the
same), :class:`HistoryEntry` (one step from the program picked to the one shown), and the
explorer's HTML panel of a change.

Kept apart from the widget so the comparison itself is plain data a test or a notebook can
use without building any ipywidgets.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from evorl_nb.program import N_INPUTS, Program
from evorl_nb.search_space import Mutation

__all__ = ["Change", "HistoryEntry", "change_html"]


@dataclass(frozen=True)
class Change:
    """What one mutation did to a program: the parent, the child and how they differ."""

    parent: Program
    """The program mutated."""
    child: Program
    """The mutated program."""
    mutation: Mutation
    """The mutation as the search space drew it (``mutation.describe()`` says it in words)."""
    changed: tuple[int, ...]
    """Graph indices of the nodes whose op, inputs or value differ."""
    now_live: tuple[int, ...]
    """Graph indices the child's loss reads but the parent's did not (added to the loss)."""
    now_dead: tuple[int, ...]
    """Graph indices the parent's loss read but the child's does not (removed from the loss)."""
    same_loss: bool
    """True if parent and child have the same fingerprint: they compute the same loss, so
    an evolution would not train the child again (a duplicate)."""

    @classmethod
    def of(cls, parent: Program, child: Program, mutation: Mutation) -> Change:
        """Compare ``parent`` and its mutated ``child`` (same number of nodes)."""
        pairs = zip(parent.nodes, child.nodes, strict=True)
        changed = tuple(i for i, (a, b) in enumerate(pairs, N_INPUTS) if a != b)
        before, after = set(parent.live()), set(child.live())
        return cls(parent, child, mutation, changed, tuple(sorted(after - before)),
                   tuple(sorted(before - after)), parent.fingerprint() == child.fingerprint())

    def describe(self) -> str:
        """A few lines of plain text: the mutation, the node changes and the verdict."""
        lines = [self.mutation.describe()]
        live = set(self.parent.live()) | set(self.child.live())
        dead = [i for i in self.changed if i not in live]
        if dead:
            lines.append(f"dead in parent and child (the output reads neither): "
                         f"{_indices(dead)}")
        if self.now_live:
            lines.append(f"added to the loss (now live): {_indices(self.now_live)}")
        if self.now_dead:
            lines.append(f"removed from the loss (now dead): {_indices(self.now_dead)}")
        if self.same_loss:
            lines.append("the loss is functionally the same (same fingerprint)")
        else:
            lines.append(f"a different loss (fingerprint {self.parent.fingerprint()} -> "
                         f"{self.child.fingerprint()})")
        return "\n".join(lines)


def _indices(idx: Iterable[int]) -> str:
    return ", ".join(str(i) for i in idx) or "none"


@dataclass
class HistoryEntry:
    """One step of :attr:`ProgramExplorer.history`."""

    name: str
    """The program's display name."""
    program: Program
    """The program."""
    change: Change | None = None
    """The change that made it from the entry before; None for the program picked."""


def change_html(change: Change, equations: Callable[[Program], tuple[str, str]]) -> str:
    """The explorer's "what changed" panel of ``change`` as HTML (with ``$$`` LaTeX): the
    mutation, the nodes before and after, the equations and the verdict. ``equations`` gives
    a program's (text, LaTeX) equations; the explorer passes its cached ones."""
    m, parent, child = change.mutation, change.parent, change.child
    live_before, live_after = set(parent.live()), set(child.live())
    if m.kind == "point":
        what = (f"a point mutation of node {m.index} ("
                + ("live" if m.index in live_before else "dead") + " in the parent, "
                + ("live" if m.index in live_after else "dead") + " in the child)")
    else:
        what = f"redrew every mutable node ({len(change.changed)} changed)"
    (text_a, tex_a), (text_b, tex_b) = equations(parent), equations(child)
    rows = [f"<p><b>What changed</b> ({html.escape(parent.name or 'parent')} → "
            f"{html.escape(child.name or 'child')}): {what}</p>"]
    nodes = []
    for i in change.changed:
        a, b = parent.node(i), child.node(i)
        nodes.append(f"node {i}: <code>{html.escape(a.describe())}</code> → "
                     f"<code>{html.escape(b.describe())}</code>")
    rows.append("<ul>" + "".join(f"<li>{n}</li>" for n in nodes[:8])
                + (f"<li>… {len(nodes) - 8} more</li>" if len(nodes) > 8 else "")
                + f"<li>added to the loss (now live): {_indices(change.now_live)}</li>"
                f"<li>removed from the loss (now dead): {_indices(change.now_dead)}</li>"
                "</ul>")
    if text_a == text_b:
        rows.append(f"<p><b>equation</b> (unchanged): $$ {tex_b} $$</p>")
    else:
        rows.append(f"<p><b>equation before</b>: $$ {tex_a} $$</p>"
                    f"<p><b>after</b>: $$ {tex_b} $$</p>")
    if change.same_loss:
        verdict = ("<b>The loss is functionally the same</b>: the child has the parent's "
                   "fingerprint, so an evolution would count it as a duplicate and not "
                   "train it again.")
    elif text_a == text_b:
        verdict = ("<b>A different loss with the same simplified equation</b>: the values "
                   "differ (fingerprint changed) but not the gradient, e.g. a term "
                   "without a gradient changed.")
    else:
        verdict = "<b>A different loss</b> (the fingerprint changed)."
    rows.append(f"<p>{verdict}</p>")
    return "".join(rows)
