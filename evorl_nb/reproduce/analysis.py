"""Statistics over an experiment folder's tables: the numbers the paper's claims are
judged by (Q-value overestimation, DQNClipped's active cases), with 95% CIs over seeds.

They take a folder or what :func:`~evorl_nb.reproduce.tables.load` returned, so the
command line and the notebook print them from one read of the folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evorl_nb.reproduce.tables import load
from evorl_nb.stats import ci95

__all__ = ["overestimation_bias", "case_summary"]


def overestimation_bias(folder: str | Path | dict):
    """Per (algorithm, env): mean of Q(s_0) - realized discounted return over the second half
    of training (after exploration and early learning), with a 95% CI over seeds. ``folder``
    may also be what :func:`load` returned."""
    data = load(folder)
    ep = data["episodes"]
    rows = []
    for (alg, env), g in ep.groupby(["algorithm", "env"], sort=False):
        per_seed = []
        for _, s in g.groupby("seed"):
            late = s[s.step >= s.step.max() / 2]
            per_seed.append(float((late.q_initial - late.discounted_return).mean()))
        m, c = ci95(per_seed)
        rows.append({"algorithm": alg, "env": env, "bias": m, "ci95": c, "seeds": len(per_seed)})
    import pandas as pd

    return pd.DataFrame(rows)


def case_summary(folder: str | Path | dict):
    """Per (env, node): the fraction of elements that took each side of the max, over all of
    training, over its first 10% and its second half (mean and 95% CI over seeds). ``folder``
    may also be what :func:`load` returned."""
    import pandas as pd

    cases = load(folder)["cases"]
    rows = []
    for (env, node), g in cases.groupby(["env", "node"], sort=False):
        row = {"env": env, "node": int(node), "op": g.op.iloc[0], "first": g["first"].iloc[0],
               "second": g["second"].iloc[0]}
        for part, pick in (("all", lambda s: s),
                           ("early", lambda s: s[s.step <= s.step.min()
                                                 + 0.1 * (s.step.max() - s.step.min())]),
                           ("late", lambda s: s[s.step >= (s.step.min() + s.step.max()) / 2])):
            per_seed = [float(np.average(p.fraction_first, weights=p.updates))
                        for _, s in g.groupby("seed") if len(p := pick(s))]
            row[f"first_{part}"], row[f"ci95_{part}"] = ci95(per_seed)
        row["seeds"] = g.seed.nunique()
        rows.append(row)
    return pd.DataFrame(rows)
