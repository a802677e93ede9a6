"""Programs (``evorl_nb.program``): validation, JSON, prune, networkx, builder, evaluate."""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")

from evorl_nb import library  # noqa: E402
from evorl_nb.program import (  # noqa: E402
    FORMAT_VERSION,
    INPUT_NAMES,
    N_INPUTS,
    Batch,
    Node,
    Program,
    ProgramBuilder,
    ProgramError,
)

F64 = torch.float64
B, A, OBS = 8, 3, 4
GAMMA = 0.99


# --- helpers -----------------------------------------------------------------


def _mlp(d_in: int, gen: torch.Generator, *, flatten: bool = False) -> torch.nn.Module:
    layers = [torch.nn.Flatten()] if flatten else []
    layers += [torch.nn.Linear(d_in, 16), torch.nn.ReLU(), torch.nn.Linear(16, A)]
    net = torch.nn.Sequential(*layers).to(F64)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.5)
    return net


def _problem(seed: int = 0, obs_shape=(OBS,)):
    gen = torch.Generator().manual_seed(seed)
    d_in = 1
    for s in obs_shape:
        d_in *= s
    flatten = len(obs_shape) > 1
    q_net, target_net = _mlp(d_in, gen, flatten=flatten), _mlp(d_in, gen, flatten=flatten)
    batch = Batch(
        obs=torch.randn((B, *obs_shape), generator=gen, dtype=F64),
        action=torch.randint(0, A, (B,), generator=gen),
        reward=torch.randn(B, generator=gen, dtype=F64),
        next_obs=torch.randn((B, *obs_shape), generator=gen, dtype=F64),
        done=(torch.rand(B, generator=gen) < 0.3).to(F64),
    )
    return batch, q_net, target_net


def _q_sa_nodes():
    return (Node("QValues", (0, 2)), Node("SelectList", (7, 1)))  # 7, 8


def _err(nodes, **kw) -> str:
    with pytest.raises(ProgramError) as info:
        Program(tuple(nodes), **kw)
    return str(info.value)


def _json_err(data) -> str:
    text = data if isinstance(data, str) else json.dumps(data)
    with pytest.raises(ProgramError) as info:
        Program.from_json(text)
    return str(info.value)


def _dict(name="dqn") -> dict:
    return library.get(name).to_dict()


# --- validation --------------------------------------------------------------


def test_type_error_names_node_op_and_types():
    msg = _err([Node("Add", (1, 5))])  # a_t (Z) + r_t (R)
    assert "node 7" in msg
    assert "Add" in msg
    assert "(Z, R)" in msg


def test_type_error_later_node():
    msg = _err(_q_sa_nodes() + (Node("SelectList", (7, 5)),))  # List[R], R
    assert "node 9" in msg and "SelectList" in msg and "(List[R], R)" in msg


def test_unknown_op():
    msg = _err([Node("Frobnicate", (0, 2))])
    assert "node 7" in msg and "unknown op" in msg and "Frobnicate" in msg


def test_wrong_arity():
    msg = _err(_q_sa_nodes() + (Node("Add", (8,)),))
    assert "node 9" in msg and "Add" in msg and "2 inputs" in msg and "got 1" in msg


@pytest.mark.parametrize("bad", [9, 10, 100, -1])
def test_input_not_earlier(bad):
    msg = _err(_q_sa_nodes() + (Node("Add", (8, bad)), Node("L2Norm", (9,))))
    assert "node 9" in msg
    assert "earlier" in msg and "cycle" in msg


@pytest.mark.parametrize("bad", ["7", 7.0, True])
def test_input_not_int(bad):
    msg = _err(_q_sa_nodes() + (Node("Add", (8, bad)),))
    assert "node 9" in msg


def test_output_must_be_r():
    msg = _err([Node("QValues", (0, 2))])
    assert "node 7" in msg and "QValues" in msg and "type R" in msg and "List[R]" in msg


def test_output_needs_gradient_path():
    msg = _err([Node("L2Norm", (5,))])  # only r_t
    assert "node 7" in msg and "gradient" in msg
    target_only = (Node("QValues", (3, 4)), Node("MaxList", (7,)), Node("Add", (5, 8)))
    assert "gradient" in _err(target_only)


def test_argmax_blocks_gradient():
    ddqn_argmax_only = (
        Node("QValues", (3, 4)),      # 7: Q_targ(s')
        Node("QValues", (0, 4)),      # 8: Q(s')
        Node("ArgMaxList", (8,)),     # 9
        Node("SelectList", (7, 9)),   # 10
    )
    msg = _err(ddqn_argmax_only)
    assert "node 10" in msg and "gradient" in msg
    # control: selecting from the online network's values does carry a gradient
    ok = Program((Node("QValues", (0, 4)), Node("ArgMaxList", (7,)), Node("SelectList", (7, 8))))
    assert ok.grad_nodes()[-1] and not ok.grad_nodes()[8]


@pytest.mark.parametrize("value", [None, float("inf"), float("nan"), True, "0.5"])
def test_constant_needs_finite_value(value):
    nodes = _q_sa_nodes() + (Node("Constant", (), value), Node("Add", (8, 9)))
    msg = _err(nodes)
    assert "node 9" in msg and "Constant" in msg and "finite" in msg


def test_constant_ok_and_value_on_other_op_rejected():
    nodes = _q_sa_nodes() + (Node("Constant", (), 0.5), Node("Add", (8, 9)))
    assert Program(nodes).types[9].label == "R"
    msg = _err((Node("QValues", (0, 2), 1.0), Node("SelectList", (7, 1))))
    assert "node 7" in msg and "only Constant" in msg


def test_empty_program_and_bad_frozen():
    assert "at least one" in _err([])
    assert "frozen" in _err(_q_sa_nodes(), frozen=3)
    assert "frozen" in _err(_q_sa_nodes(), frozen=-1)


def test_valid_program_types():
    p = library.get("dqn")
    assert len(p.types) == N_INPUTS + len(p.nodes)
    assert p.output_type.label == "R"
    assert p.output == N_INPUTS + len(p.nodes) - 1


# --- JSON --------------------------------------------------------------------


@pytest.mark.parametrize("name", library.names())
def test_library_json_round_trip(name):
    p = library.get(name)
    text = p.to_json()
    back = Program.from_json(text)
    assert back == p
    assert back.nodes == p.nodes and back.frozen == p.frozen and back.name == p.name
    assert back.to_json() == text
    assert Program.from_json(p.to_json(indent=2)) == p


def test_round_trip_with_frozen_and_constants():
    p = Program(_q_sa_nodes() + (Node("Constant", (), 1 / 3), Node("Add", (8, 9))),
                frozen=2, name="x")
    back = Program.from_json(p.to_json())
    assert back == p and back.frozen == 2 and back.nodes[2].value == 1 / 3


def test_not_json():
    assert "not JSON" in _json_err("{not json")


@pytest.mark.parametrize("text", ["[1, 2]", "42", '"program"', "null"])
def test_not_an_object(text):
    assert "object" in _json_err(text)


def test_version_missing_or_invalid():
    d = _dict()
    del d["version"]
    assert "version" in _json_err(d)
    for bad in ("1", 1.0, True, None):
        d = _dict()
        d["version"] = bad
        assert "version" in _json_err(d)


def test_version_newer():
    d = _dict()
    d["version"] = FORMAT_VERSION + 1
    msg = _json_err(d)
    assert "version" in msg and "upgrade" in msg


def test_wrong_inputs_and_format():
    d = _dict()
    d["inputs"] = list(reversed(INPUT_NAMES))
    assert "inputs" in _json_err(d)
    d = _dict()
    d["format"] = "something.else"
    assert "format" in _json_err(d)


def test_unknown_top_level_field():
    d = _dict()
    d["code"] = "print(1)"
    msg = _json_err(d)
    assert "unknown field" in msg and "code" in msg


def test_other_bad_fields():
    d = _dict()
    d["nodes"] = {"0": {}}
    assert "nodes" in _json_err(d)
    d = _dict()
    d["nodes"][1] = ["SelectList", [7, 1]]
    assert "nodes[1]" in _json_err(d)
    d = _dict()
    d["nodes"][1]["extra"] = 1
    msg = _json_err(d)
    assert "nodes[1]" in msg and "extra" in msg
    d = _dict()
    d["frozen"] = "0"
    assert "frozen" in _json_err(d)
    d = _dict()
    d["name"] = 7
    assert "name" in _json_err(d)


def test_unknown_op_in_file():
    d = _dict()
    d["nodes"][2]["op"] = "Teleport"
    msg = _json_err(d)
    assert "nodes[2].op" in msg and "Teleport" in msg
    d = _dict()
    del d["nodes"][2]["op"]
    assert "nodes[2].op" in _json_err(d)


@pytest.mark.parametrize("bad", [["QValues"], {"name": "QValues"}])
def test_unhashable_op_in_file(bad):
    d = _dict()
    d["nodes"][0]["op"] = bad
    assert "nodes[0].op" in _json_err(d)


def test_later_input_in_file():
    d = _dict("ddqn")
    assert d["nodes"][3]["op"] == "SelectList" and len(d["nodes"][3]["inputs"]) == 2
    for bad in (N_INPUTS + 3, N_INPUTS + 5, -1):
        d["nodes"][3]["inputs"][1] = bad
        msg = _json_err(d)
        assert "nodes[3].inputs[1]" in msg
        assert "cycle" in msg or "earlier" in msg


@pytest.mark.parametrize("bad", ["7", 7.0, True, None, [7]])
def test_non_integer_input_in_file(bad):
    d = _dict()
    d["nodes"][1]["inputs"][0] = bad
    assert "nodes[1].inputs" in _json_err(d)


def test_inputs_not_a_list_in_file():
    d = _dict()
    d["nodes"][1]["inputs"] = "7, 1"
    assert "nodes[1].inputs" in _json_err(d)


def test_type_error_in_file():
    d = _dict()
    assert d["nodes"][1] == {"op": "SelectList", "inputs": [7, 1]}
    d["nodes"][1]["inputs"] = [7, 5]  # SelectList(List[R], R)
    msg = _json_err(d)
    assert "node 8" in msg and "SelectList" in msg and "(List[R], R)" in msg


def test_constant_value_checked_in_file():
    d = _dict("cql")
    k = next(i for i, n in enumerate(d["nodes"]) if n["op"] == "Constant")
    d["nodes"][k]["value"] = "__import__('os')"
    assert "Constant" in _json_err(d)


def test_code_in_op_is_never_evaluated(tmp_path, capfd):
    marker = tmp_path / "hacked"
    payloads = [
        "__import__('os').system('echo hacked')",
        f"__import__('pathlib').Path({str(marker)!r}).write_text('hacked')",
    ]
    for payload in payloads:
        d = _dict()
        d["nodes"][0] = {"op": payload, "inputs": [0, 2]}
        msg = _json_err(d)
        assert "nodes[0].op" in msg and "unknown op" in msg
        with pytest.raises(ProgramError, match="unknown op"):
            Program.from_dict(d)
    assert not marker.exists()
    out, err = capfd.readouterr()
    assert "hacked" not in out and "hacked" not in err


# --- prune / live ------------------------------------------------------------


def _insert(prog: Program, pos: int, dead: list[Node], frozen: int | None = None) -> Program:
    """``prog`` with op nodes ``dead`` inserted before op position ``pos``.

    Dead nodes' inputs are given in the new numbering; the original nodes'
    inputs are shifted past the insertion.
    """
    k = len(dead)

    def shift(j):
        return j + k if j >= N_INPUTS + pos else j

    nodes = [Node(n.op, tuple(shift(j) for j in n.inputs), n.value) for n in prog.nodes]
    nodes[pos:pos] = dead
    return Program(tuple(nodes), frozen=prog.frozen if frozen is None else frozen, name=prog.name)


def _bloated_dqn():
    p = library.get("dqn")
    # before everything: a constant, a target-network read and an Exp of the reward
    b1 = _insert(p, 0, [Node("Constant", (), 0.5), Node("QValues", (3, 2)), Node("Exp", (5,))])
    # in the middle (after QValues(q, s_t) at 10 and SelectList at 11): dead readers of a
    # live node, at indices 12, 13, 14
    b2 = _insert(b1, 5, [Node("MaxList", (10,)), Node("Softmax", (10,)), Node("Entropy", (13,))])
    return p, b2, {7, 8, 9, 12, 13, 14}


def test_prune_removes_dead_nodes():
    p, bloated, dead = _bloated_dqn()
    assert len(bloated.nodes) == len(p.nodes) + 6
    assert bloated != p
    live = bloated.live()
    assert not dead & set(live)
    assert set(range(N_INPUTS + len(bloated.nodes))) - set(live) == dead
    assert live == sorted(live) and live[-1] == bloated.output
    pruned = bloated.prune()
    assert pruned.nodes == p.nodes
    assert pruned == p
    assert pruned.name == "dqn"
    assert p.prune() == p
    assert p.live() == list(range(N_INPUTS + len(p.nodes)))


def test_prune_keeps_loss():
    p, bloated, _ = _bloated_dqn()
    batch, q_net, target_net = _problem(3)
    ref = p.loss(batch, q_net, target_net)
    assert torch.equal(bloated.loss(batch, q_net, target_net), ref)
    assert torch.equal(bloated.prune().loss(batch, q_net, target_net), ref)


def test_prune_remaps_frozen():
    p = library.get("dqn")
    base = Program(p.nodes, frozen=2, name="dqn")  # the Q(s_t, a_t) prefix is frozen
    # a dead node inside the frozen prefix: frozen 3 -> 2 after pruning
    b = _insert(base, 1, [Node("Constant", (), 0.1)], frozen=3)
    pruned = b.prune()
    assert pruned.frozen == 2 and pruned.nodes == p.nodes
    # dead nodes after the frozen prefix do not change it
    b = _insert(base, 3, [Node("Constant", (), 0.1), Node("Abs", (5,))])
    assert b.frozen == 2 and b.prune().frozen == 2
    # a frozen prefix made only of dead nodes disappears
    b = _insert(Program(p.nodes), 0, [Node("Abs", (5,)), Node("Exp", (5,))], frozen=2)
    assert b.prune().frozen == 0
    # everything frozen stays everything frozen
    b = _insert(Program(p.nodes), 0, [Node("Abs", (5,))], frozen=len(p.nodes) + 1)
    assert b.prune().frozen == len(p.nodes)


# --- networkx ----------------------------------------------------------------


def test_to_networkx_dqn():
    nx = pytest.importorskip("networkx")
    p = library.get("dqn")
    g = p.to_networkx()
    assert g.number_of_nodes() == 7 + 8
    assert nx.is_directed_acyclic_graph(g)
    expected = {(j, i) for i, n in enumerate(p.nodes, N_INPUTS) for j in n.inputs}
    assert set(g.edges()) == expected
    for i, n in enumerate(p.nodes, N_INPUTS):
        for slot, j in enumerate(n.inputs):
            assert g.edges[j, i]["slot"] == slot
    assert [i for i, a in g.nodes(data=True) if a["output"]] == [p.output] == [14]
    assert [i for i, a in g.nodes(data=True) if a["input"]] == list(range(N_INPUTS))
    ops = [g.nodes[i]["op"] for i in range(15)]
    assert ops[:7] == list(INPUT_NAMES)
    assert ops[7:] == ["QValues", "SelectList", "QValues", "MaxList", "DotProduct", "Add",
                       "Subtract", "L2Norm"]
    assert g.nodes[7]["type"] == "List[R]" and g.nodes[14]["type"] == "R"
    assert g.nodes[1]["type"] == "Z"
    grad = {i for i in g.nodes if g.nodes[i]["grad"]}
    # Q(s_t, a_t) path carries gradient; the target path (Q_targ, max, d*max, r+...) does not
    assert grad == {0, 7, 8, 13, 14}
    for i in (3, 9, 10, 11, 12):
        assert g.nodes[i]["grad"] is False
    assert all(g.nodes[i]["live"] for i in g.nodes)


def test_to_networkx_marks_dead_nodes():
    pytest.importorskip("networkx")
    _, bloated, dead = _bloated_dqn()
    g = bloated.to_networkx()
    assert {i for i in g.nodes if not g.nodes[i]["live"]} == dead


# --- ProgramBuilder ----------------------------------------------------------


def test_builder_dqn_matches_library():
    b = ProgramBuilder()
    # the target first, then Q(s_t, a_t): a different node order from the library's
    y = b.Add(b.r_t, b.DotProduct(b.discount, b.MaxList(b.QValues(b.q_targ, b.s_tp1))))
    unused = b.Exp(b.r_t)  # dead, dropped by build
    q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    prog = b.build(b.L2Norm(b.Subtract(q_sa, y)), name="mine")
    lib = library.get("dqn")
    assert unused == N_INPUTS + 4
    assert len(prog.nodes) == 8 and "Exp" not in [n.op for n in prog.nodes]
    assert prog.nodes != lib.nodes
    for seed in (0, 1):
        batch, q_net, target_net = _problem(seed)
        mine = prog.loss(batch, q_net, target_net, GAMMA)
        ref = lib.loss(batch, q_net, target_net, GAMMA)
        assert torch.allclose(mine, ref, rtol=1e-12, atol=1e-12)
        # and by hand
        with torch.no_grad():
            target = batch.reward + GAMMA * (1 - batch.done) * target_net(batch.next_obs).max(-1).values
        q = q_net(batch.obs).gather(-1, batch.action[:, None]).squeeze(-1)
        assert torch.allclose(ref, ((q - target) ** 2).mean(), rtol=1e-12, atol=1e-12)


def test_builder_same_order_gives_same_nodes():
    b = ProgramBuilder()
    q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    y = b.Add(b.r_t, b.DotProduct(b.discount, b.MaxList(b.QValues(b.q_targ, b.s_tp1))))
    assert b.build(b.L2Norm(b.Subtract(q_sa, y))) == library.get("dqn")


def test_builder_unknown_op():
    b = ProgramBuilder()
    with pytest.raises(AttributeError) as info:
        b.Teleport(b.q, b.s_t)
    msg = str(info.value)
    assert "Teleport" in msg and "known ops" in msg and "QValues" in msg
    with pytest.raises(AttributeError):
        b._secret  # noqa: B018


def test_builder_invalid_raises_program_error():
    b = ProgramBuilder()
    with pytest.raises(ProgramError, match="Add"):
        b.build(b.Add(b.a_t, b.r_t))


# --- evaluate / loss ---------------------------------------------------------


@pytest.mark.parametrize("name", library.names())
def test_evaluate_shape_and_loss_mean(name):
    p = library.get(name)
    batch, q_net, target_net = _problem(1)
    per = p.per_transition(batch, q_net, target_net)
    assert per.shape == (B,) and per.dtype == F64
    assert torch.isfinite(per).all()
    assert torch.equal(p.loss(batch, q_net, target_net), per.mean())


@pytest.mark.parametrize("name", library.names())
def test_target_network_gets_no_gradient(name):
    p = library.get(name)
    batch, q_net, target_net = _problem(2)
    loss = p.loss(batch, q_net, target_net)
    targ = torch.autograd.grad(loss, list(target_net.parameters()), allow_unused=True,
                               retain_graph=True)
    assert all(g is None for g in targ)
    online = torch.autograd.grad(loss, list(q_net.parameters()), allow_unused=True)
    assert all(g is not None for g in online)
    assert any(g.abs().sum() > 0 for g in online)


def test_gamma_and_done_enter_the_discount():
    p = library.get("dqn")
    batch, q_net, target_net = _problem(4)
    done = batch._replace(done=torch.ones(B, dtype=F64))
    with torch.no_grad():
        q = q_net(batch.obs).gather(-1, batch.action[:, None]).squeeze(-1)
    assert torch.allclose(p.per_transition(done, q_net, target_net), (q - batch.reward) ** 2)
    assert torch.allclose(p.per_transition(batch, q_net, target_net, gamma=0.0),
                          (q - batch.reward) ** 2)
    assert not torch.allclose(p.per_transition(batch, q_net, target_net, gamma=0.5),
                              (q - batch.reward) ** 2)


def _noisy():
    b = ProgramBuilder()
    q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    return b.build(b.L2Norm(b.Add(q_sa, b.Subtract(b.Normal(), b.Normal()))), name="noisy")


def test_normal_node_follows_generator():
    p = _noisy()
    assert [n.op for n in p.nodes].count("Normal") == 2
    batch, q_net, target_net = _problem(5)

    def loss(seed):
        return p.loss(batch, q_net, target_net, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(loss(11), loss(11))
    assert not torch.equal(loss(11), loss(12))
    # the two Normal nodes draw separately (not merged as identical sub-graphs)
    g = torch.Generator().manual_seed(11)
    n1 = torch.randn(B, generator=g, dtype=F64)
    n2 = torch.randn(B, generator=g, dtype=F64)
    with torch.no_grad():
        q = q_net(batch.obs).gather(-1, batch.action[:, None]).squeeze(-1)
    assert torch.allclose(loss(11), ((q + n1 - n2) ** 2).mean(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", library.names())
def test_image_like_observations(name):
    p = library.get(name)
    batch, q_net, target_net = _problem(6, obs_shape=(3, 3))
    assert batch.obs.shape == (B, 3, 3)
    per = p.per_transition(batch, q_net, target_net)
    assert per.shape == (B,) and torch.isfinite(per).all()
    loss = p.loss(batch, q_net, target_net)
    loss.backward()
    assert all(q.grad is not None for q in q_net.parameters())
    assert all(t.grad is None for t in target_net.parameters())


def test_dot_and_l2_on_image_states():
    # S-typed DotProduct / L2Distance reduce over every state axis
    b = ProgramBuilder()
    q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    prog = b.build(b.Add(q_sa, b.L2Distance(b.s_t, b.s_tp1)))
    batch, q_net, target_net = _problem(7, obs_shape=(3, 3))
    with torch.no_grad():
        q = q_net(batch.obs).gather(-1, batch.action[:, None]).squeeze(-1)
    want = q + 0.5 * ((batch.obs - batch.next_obs) ** 2).flatten(1).sum(-1)
    assert torch.allclose(prog.per_transition(batch, q_net, target_net), want)


def test_same_net_as_online_and_target_still_trains():
    """The target slot (input 3) runs without gradient, whatever object fills it."""
    p = library.get("dqn")
    batch, q_net, _ = _problem(8)
    frozen_copy = copy.deepcopy(q_net)
    want = torch.autograd.grad(p.loss(batch, q_net, frozen_copy), list(q_net.parameters()))
    loss = p.loss(batch, q_net, q_net)
    assert loss.requires_grad
    got = torch.autograd.grad(loss, list(q_net.parameters()))
    assert all(torch.allclose(a, b) for a, b in zip(got, want))


def test_version_below_one_and_list_inputs():
    d = _dict()
    d["version"] = 0
    assert "version" in _json_err(d)
    prog = Program((Node("QValues", [0, 2]), Node("SelectList", [N_INPUTS, 1])))
    assert prog.nodes[0].inputs == (0, 2)
    assert hash(prog.nodes[0])
