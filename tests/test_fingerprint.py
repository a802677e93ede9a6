"""The functional-equivalence fingerprint and the structural hash."""

import json
import subprocess
import sys

from evorl_nb import Node, Program, ProgramBuilder, library
from evorl_nb.fingerprint import PROBE, fingerprint_values, probe_inputs
from evorl_nb.program import N_INPUTS


def test_probe_matches_the_paper():
    batch, q, _ = probe_inputs("paper")
    assert batch.obs.shape == (10, 4) and PROBE["decimals"] == 4
    assert set(batch.action.tolist()) <= {0, 1, 2}
    assert batch.reward.abs().max() <= 100 and (1 - batch.done).abs().max() <= 100
    assert batch.reward.abs().max() > 50  # the paper's scale, not the unit one
    assert q(batch.obs).shape == (10, 3)
    small, _, _ = probe_inputs("unit")
    assert small.obs.abs().max() <= 1 and PROBE["probes"] == ("paper", "unit", "rl")
    rl, _, _ = probe_inputs("rl")
    assert set((1 - rl.done).round(decimals=6).tolist()) <= {0.0, 0.99}  # gamma = 1 in probes


def test_a_term_masked_at_the_papers_scale_still_counts():
    """max(Q, gamma - 0.5 (<s_t, s_t+1> - r)^2) is Q at scale 100 but not at scale 1."""
    b = ProgramBuilder()
    q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    y = b.Add(b.r_t, b.DotProduct(b.discount, b.MaxList(b.QValues(b.q_targ, b.s_tp1))))
    masked = b.Max(q_sa, b.Subtract(b.discount, b.L2Distance(b.DotProduct(b.s_t, b.s_tp1), b.r_t)))
    other = b.build(b.L2Norm(b.Subtract(masked, y)))
    assert other.fingerprint() != library.get("dqn").fingerprint()


def test_library_fingerprints_are_distinct():
    prints = {name: library.get(name).fingerprint() for name in library.names()}
    assert len(set(prints.values())) == len(prints)


def test_fingerprint_is_stable_across_processes():
    here = {name: library.get(name).fingerprint() for name in library.names()}
    code = ("import json; from evorl_nb import library; "
            "print(json.dumps({n: library.get(n).fingerprint() for n in library.names()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == here


def _with_dead_nodes(prog: Program) -> Program:
    """Prepend dead nodes and shift the live ones after them."""
    dead = (Node("Constant", (), 0.5), Node("Exp", (5,)), Node("QValues", (3, 4)))
    k = len(dead)
    shift = lambda j: j if j < N_INPUTS else j + k  # noqa: E731
    live = tuple(Node(n.op, tuple(shift(j) for j in n.inputs), n.value) for n in prog.nodes)
    return Program(dead + live)


def test_dead_nodes_do_not_change_hashes():
    for name in library.names():
        prog = library.get(name)
        padded = _with_dead_nodes(prog)
        assert padded != prog
        assert padded.fingerprint() == prog.fingerprint()
        assert padded.structural_hash() == prog.structural_hash()


def _reg(swap: bool, const: float = 0.1):
    b = ProgramBuilder()
    q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    y = b.Add(b.r_t, b.DotProduct(b.discount, b.MaxList(b.QValues(b.q_targ, b.s_tp1))))
    td = b.L2Norm(b.Subtract(q_sa, y))
    reg = b.DotProduct(b.constant(const), q_sa)
    return b.build(b.Add(reg, td) if swap else b.Add(td, reg))


def test_commutative_argument_order_shares_hashes():
    assert _reg(False) != _reg(True)
    assert _reg(False).fingerprint() == _reg(True).fingerprint()
    assert _reg(False).structural_hash() == _reg(True).structural_hash()


def test_same_loss_different_graph_shares_fingerprint_not_structure():
    # 0.1 * Q via a Constant node and via MultiplyTenth: same function, different graphs
    assert _reg(False).fingerprint() == library.get("dqn_reg").fingerprint()
    assert _reg(False).structural_hash() != library.get("dqn_reg").structural_hash()


def test_different_losses_differ():
    assert _reg(False, 0.1).fingerprint() != _reg(False, 0.2).fingerprint()
    assert _reg(False, 0.1).structural_hash() != _reg(False, 0.2).structural_hash()


def test_non_finite_outputs_hash_to_fixed_values():
    b = ProgramBuilder()
    q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    huge = b.Exp(b.Exp(b.Exp(b.Abs(q_sa))))  # at least exp(exp(e)) ~ 3.8e6
    inf = b.L2Norm(b.L2Norm(b.L2Norm(b.L2Norm(b.L2Norm(b.L2Norm(huge))))))  # huge^64: inf
    nan = b.Subtract(inf, inf)
    p_inf, p_nan = b.build(inf), b.build(nan)
    v_inf, v_nan = fingerprint_values(p_inf)[:10], fingerprint_values(p_nan)[:10]  # scale 100
    assert (v_inf == v_inf[0]).all() and v_inf[0] > 1e299
    assert (v_nan == v_nan[0]).all() and v_nan[0] != v_inf[0]
    assert p_inf.fingerprint() != p_nan.fingerprint()
    assert len(p_nan.fingerprint()) == 16


def test_huge_outputs_round_to_significant_digits_so_the_hash_survives_reordering():
    """Four decimals of 1e13 are finer than float64 resolves: another summation order
    changed such a program's fingerprint. From 1e9 up the step is relative."""
    import numpy as np

    from evorl_nb.fingerprint import stable_round

    rng = np.random.default_rng(3)
    huge = rng.choice([-1, 1], 500) * 10 ** rng.uniform(9.5, 20, 500)
    nudged = huge * (1 + 3e-15)  # a few units in the last place, as another order gives
    assert (stable_round(huge) == stable_round(nudged)).all()
    assert (np.round(huge, 4) != np.round(nudged, 4)).mean() > 0.9  # the old rule moved
    # below 1e9 the rounding is the paper's 4 decimals, bit for bit
    small = rng.normal(0, 1e4, 500)
    assert (stable_round(small) == np.round(small, 4) + 0.0).all()
    assert str(stable_round(np.array([-0.0]))[0]) == "0.0"


def test_saved_cache_keys_did_not_move():
    """The fingerprints runs were saved with, for programs below 1e9 on the probes (the
    library) and for NaN outputs, are what they were before the relative rounding."""
    saved = {"dqn": "11fdcb5592ad39fe", "ddqn": "678c5f7812c4b3bc",
             "dqn_reg": "a2032037dc783cd2", "dqn_clipped": "68d38a01f540d731",
             "cql": "fbc77d77cb691603", "mdqn": "579dc0e909002d8a",
             "dqn_half": "dba52d5addfbd261"}
    assert {name: library.get(name).fingerprint() for name in saved} == saved
    b = ProgramBuilder()
    inf = b.Exp(b.Exp(b.Exp(b.Abs(b.SelectList(b.QValues(b.q, b.s_t), b.a_t)))))
    for _ in range(6):
        inf = b.L2Norm(inf)
    assert b.build(b.Subtract(inf, inf)).fingerprint() == "f4db858671498db7"  # NaN everywhere
