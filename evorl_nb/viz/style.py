"""One look for every figure: one colour per algorithm, one template, widths that fit.

Every figure in ``evorl_nb.viz`` and in the notebooks takes an algorithm's colour from
:func:`algorithm_color`, so DQNReg is the same green in the training curves, the
overestimation plot, the score bars and the paper's experiments. Figures are sized to
:data:`COLUMN_WIDTH`, the output column of a JupyterLab notebook with its file browser open,
or left to autosize to whatever column they are shown in.
"""

from __future__ import annotations

import re

__all__ = ["TEMPLATE", "COLUMN_WIDTH", "ALGORITHM_COLORS", "algorithm_color", "fit", "table"]

TEMPLATE = "plotly_white"
"""The plotly template of every figure."""

COLUMN_WIDTH = 940
"""Pixels a fixed-width figure may take: a JupyterLab output column at a 1400 px window with
the file browser open is ~970 px."""

ALGORITHM_COLORS = {
    "dqn": "#1f77b4",
    "ddqn": "#ff7f0e",
    "dqn_reg": "#2ca02c",
    "dqn_clipped": "#d62728",
    "cql": "#9467bd",
    "mdqn": "#8c564b",
    "dqn_half": "#17becf",
}
"""The colour of each library algorithm, everywhere."""

_OTHERS = ("#e377c2", "#7f7f7f", "#bcbd22", "#393b79", "#ad494a", "#637939", "#843c39",
           "#5254a3", "#8ca252", "#bd9e39")
"""Colours for programs outside the library (found ones), none of them an algorithm's."""


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(name): color for name, color in ALGORITHM_COLORS.items()}


def algorithm_color(name: str, index: int = 0) -> str:
    """The colour of algorithm ``name`` (a library name, in any case or spacing: "DQNReg",
    "dqn_reg"); any other name gets the ``index``-th of the colours no algorithm uses."""
    return _BY_KEY.get(_key(str(name)), _OTHERS[index % len(_OTHERS)])


def fit(fig, height: int | None = None, legend_below: bool = False):
    """Let ``fig`` take its column's width (no fixed width), with ``height`` if given and the
    legend under the plot where a side legend would squeeze it; returns ``fig``."""
    fig.update_layout(width=None, autosize=True, template=TEMPLATE)
    if height is not None:
        fig.update_layout(height=height)
    if legend_below:
        fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0})
    return fig


def table(df, precision: int = 3):
    """A pandas Styler for a table people read: cells HTML-escaped (so ``<s_t, s_{t+1}>``
    shows), text left-aligned and wrapped rather than cut, numbers to ``precision`` decimals,
    NaN blank, no index."""
    import pandas as pd

    text = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])
            or pd.api.types.is_bool_dtype(df[c])]
    styler = df.style.hide(axis="index").format(precision=precision, na_rep="", escape="html")
    integers = [c for c in df.columns if pd.api.types.is_integer_dtype(df[c])]
    if integers:
        styler = styler.format("{:d}", subset=integers)
    styler = styler.set_properties(subset=text, **{"text-align": "left", "white-space": "normal",
                                                   "overflow-wrap": "anywhere"})
    return styler.set_table_styles([{"selector": "th", "props": [("text-align", "left")]},
                                    {"selector": "", "props": [("max-width", "100%")]}])
