"""How TD-like are the losses a search evaluated? Best fitness so far, then every distinct
evaluated program sorted by the target of its squared TD error (symbolic.td_target):

    no TD error / δ² toward a target without a Q network (r_t, γ, states) /
    δ² toward a target that bootstraps from Q or Q_targ / δ² toward DQN's own target

Usage: python docs/results/search/td_targets.py docs/results/search/scratch
(what docs/REPRODUCTION.md quotes for claim 1; about a minute per 5,000 distinct programs).
"""

import collections
import sys

import sympy

from evorl_nb import symbols as S
from evorl_nb.program import Program
from evorl_nb.store import load_run
from evorl_nb.symbolic import DQN_TARGET, simplify, td_target


def kind(program: Program) -> str:
    """Which of the four kinds above the program's loss is."""
    target = td_target(simplify(program))
    if target is None:
        return "no TD error"
    if sympy.expand(target - DQN_TARGET) == 0:
        return "δ², DQN's target"
    if target.has(S.Q_targ) or target.has(S.Q):
        return "δ², target bootstraps from a Q network"
    return "δ², target without a Q network"


def main(run: str) -> None:
    df = load_run(run).candidates
    print(f"{len(df)} candidates; {df.status.value_counts().to_dict()}")
    best = df.fitness.fillna(0).cummax()
    for n in (600, 1000, 3000, 5000, 10000, 15000, 20000, 25000, 30000, 35000, 40000):
        if n <= len(df):
            print(f"best after {n:>6}: {best.iloc[n - 1]:.3f}")
    evaluated = df[df.status.isin(["trained", "below_hurdle"])].drop_duplicates("fingerprint")
    print(f"distinct evaluated: {len(evaluated)}")
    counts, top = collections.Counter(), {}
    for r in evaluated.itertuples():
        try:
            k = kind(Program.from_json(r.program))
        except Exception:  # noqa: BLE001 - sympy cannot read it: counted apart
            k = "(no symbolic form)"
        counts[k] += 1
        if r.fitness > top.get(k, (-1.0, 0))[0]:
            top[k] = (r.fitness, int(r.id))
    for k, n in counts.most_common():
        fitness, cid = top[k]
        print(f"{k:<40} {n:>6}  best fitness {fitness:.3f} (id {cid})")


if __name__ == "__main__":
    main(sys.argv[1])
