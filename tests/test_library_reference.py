"""Independent PyTorch reference for every known loss in ``evorl_nb.library``.

Each reference below is written directly in torch (gather, max, logsumexp,
softmax, ...) from the written definitions, without calling anything in
``evorl_nb``. The tests compare, in float64, the loss value and the gradient
with respect to every parameter of the online network ``q_net`` against the
loss that the package evaluates from its graph.

Notation: d = gamma * (1 - done), Q = q_net, Qt = target_net, s = obs,
s' = next_obs, a = action, delta = Q(s, a) - Y; every loss is the mean over the
batch. Target values carry no gradient.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from evorl_nb import Batch, library

KNOWN = ("dqn", "ddqn", "dqn_reg", "dqn_clipped", "cql", "mdqn")
SEEDS = (0, 1, 2, 3, 4)
GAMMA = 0.99
B = 32
DTYPE = torch.float64

MDQN_TAU = 0.03
MDQN_ALPHA = 0.9

# Exact-ish tolerance for the losses that involve no guarded log.
EXACT = {"rtol": 1e-10, "atol": 1e-10}
# mdqn: the graph may compute log pi as log(p + 1e-8) (the authors' guard) rather
# than an exact log_softmax. With tau = 0.03 the softmax is sharp, so the guard
# shifts tau * log pi by up to about tau * 1e-8 / p; the tolerance accepts a
# guard of that size and nothing much larger.
# (As of writing the package builds an exact log-softmax, logits - logsumexp, and
# agrees with the reference to ~1e-15; the looser tolerance is kept deliberately.)
MDQN_TOL = {"rtol": 1e-5, "atol": 1e-6}


# --- problem construction ----------------------------------------------------


def _mlp(d_in: int, n_act: int, gen: torch.Generator) -> torch.nn.Module:
    net = torch.nn.Sequential(
        torch.nn.Linear(d_in, 16), torch.nn.ReLU(), torch.nn.Linear(16, n_act)
    ).to(DTYPE)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DTYPE) * 0.5)
    return net


def _problem(seed: int, all_done: bool = False):
    """Random (q_net, target_net, batch tensors) for one seed; no global seeding."""
    gen = torch.Generator().manual_seed(1000 + seed)
    d_in = 4 + seed % 3  # 4..6
    n_act = 3 + seed % 3  # 3..5
    q_net = _mlp(d_in, n_act, gen)
    target_net = _mlp(d_in, n_act, gen)  # different draws than q_net
    obs = torch.randn(B, d_in, generator=gen, dtype=DTYPE)
    next_obs = torch.randn(B, d_in, generator=gen, dtype=DTYPE)
    action = torch.randint(0, n_act, (B,), generator=gen, dtype=torch.long)
    reward = torch.randn(B, generator=gen, dtype=DTYPE) * 2.0
    reward[0], reward[1] = abs(reward[0]) + 0.1, -abs(reward[1]) - 0.1  # both signs
    if all_done:
        done = torch.ones(B, dtype=DTYPE)
    else:
        done = (torch.rand(B, generator=gen, dtype=DTYPE) < 0.3).to(DTYPE)
        done[0], done[1] = 0.0, 1.0  # both appear
    return q_net, target_net, (obs, action, reward, next_obs, done)


# --- references (plain torch, straight from the definitions) -------------------


def _q_sa(q_net, obs, action):
    return q_net(obs).gather(1, action.unsqueeze(1)).squeeze(1)


def _dqn_target(target_net, reward, next_obs, done, gamma):
    with torch.no_grad():
        d = gamma * (1.0 - done)
        return reward + d * target_net(next_obs).max(dim=1).values


def ref_dqn(q_net, target_net, t, gamma):
    obs, action, reward, next_obs, done = t
    y = _dqn_target(target_net, reward, next_obs, done, gamma)
    return ((_q_sa(q_net, obs, action) - y) ** 2).mean()


def ref_ddqn(q_net, target_net, t, gamma):
    obs, action, reward, next_obs, done = t
    with torch.no_grad():
        d = gamma * (1.0 - done)
        a_star = q_net(next_obs).argmax(dim=1)  # online net picks, no gradient
        y = reward + d * target_net(next_obs).gather(1, a_star.unsqueeze(1)).squeeze(1)
    return ((_q_sa(q_net, obs, action) - y) ** 2).mean()


def ref_dqn_reg(q_net, target_net, t, gamma):
    obs, action, reward, next_obs, done = t
    y = _dqn_target(target_net, reward, next_obs, done, gamma)
    q = _q_sa(q_net, obs, action)
    return ((q - y) ** 2 + 0.1 * q).mean()


def ref_dqn_clipped(q_net, target_net, t, gamma):
    obs, action, reward, next_obs, done = t
    with torch.no_grad():
        d = gamma * (1.0 - done)
        qt_max = target_net(next_obs).max(dim=1).values
        y = reward + d * qt_max
    q = _q_sa(q_net, obs, action)
    first = torch.maximum(q, (q - y) ** 2 + y)
    second = torch.maximum(q - y, d * qt_max**2)
    return (first + second).mean()


def ref_cql(q_net, target_net, t, gamma):
    obs, action, reward, next_obs, done = t
    y = _dqn_target(target_net, reward, next_obs, done, gamma)
    q_all = q_net(obs)
    q = q_all.gather(1, action.unsqueeze(1)).squeeze(1)
    return ((q - y) ** 2 + 0.5 * (torch.logsumexp(q_all, dim=1) - q)).mean()


def ref_mdqn(q_net, target_net, t, gamma, tau=MDQN_TAU, alpha=MDQN_ALPHA):
    obs, action, reward, next_obs, done = t
    with torch.no_grad():
        d = gamma * (1.0 - done)
        qt_s = target_net(obs)
        qt_next = target_net(next_obs)
        log_pi_s = torch.log_softmax(qt_s / tau, dim=1)
        log_pi_next = torch.log_softmax(qt_next / tau, dim=1)
        pi_next = log_pi_next.exp()
        bonus = alpha * tau * log_pi_s.gather(1, action.unsqueeze(1)).squeeze(1)
        soft_v = (pi_next * (qt_next - tau * log_pi_next)).sum(dim=1)
        target = reward + bonus + d * soft_v
    return ((_q_sa(q_net, obs, action) - target) ** 2).mean()


REFERENCES = {
    "dqn": ref_dqn,
    "ddqn": ref_ddqn,
    "dqn_reg": ref_dqn_reg,
    "dqn_clipped": ref_dqn_clipped,
    "cql": ref_cql,
    "mdqn": ref_mdqn,
}
TOLERANCES = {name: (MDQN_TOL if name == "mdqn" else EXACT) for name in KNOWN}


def _package_loss(name, q_net, target_net, t, gamma=GAMMA):
    obs, action, reward, next_obs, done = t
    batch = Batch(obs, action, reward, next_obs, done)
    return library.get(name).loss(batch, q_net, target_net, gamma=gamma)


# --- tests -------------------------------------------------------------------


def test_library_names_and_unknown_name():
    assert set(library.names()) >= set(KNOWN)
    with pytest.raises((KeyError, ValueError)) as err:
        library.get("nope")
    assert "dqn" in str(err.value)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", KNOWN)
def test_loss_and_grad_match_reference(name, seed):
    q_net, target_net, t = _problem(seed)
    params = list(q_net.parameters())
    tol = TOLERANCES[name]

    ref = REFERENCES[name](q_net, target_net, t, GAMMA)
    ref_grads = torch.autograd.grad(ref, params)

    got = _package_loss(name, q_net, target_net, t)
    assert isinstance(got, torch.Tensor) and got.dim() == 0, getattr(got, "shape", got)
    assert got.dtype == DTYPE
    got_grads = torch.autograd.grad(got, params, allow_unused=True)

    torch.testing.assert_close(got.detach(), ref.detach(), **tol)
    for (pname, _), g_ref, g_got in zip(q_net.named_parameters(), ref_grads, got_grads):
        assert g_got is not None, f"{name}: no gradient reaches q_net.{pname}"
        torch.testing.assert_close(
            g_got, g_ref, **tol, msg=lambda m, pname=pname: f"{name} q_net.{pname}: {m}"
        )


@pytest.mark.parametrize("name", KNOWN)
def test_target_net_gets_no_gradient(name):
    q_net, target_net, t = _problem(0)
    t_params = list(target_net.parameters())
    assert all(p.requires_grad for p in t_params)
    got = _package_loss(name, q_net, target_net, t)
    assert got.requires_grad
    grads = torch.autograd.grad(got, t_params, allow_unused=True)
    for (pname, _), g in zip(target_net.named_parameters(), grads):
        assert g is None or torch.count_nonzero(g) == 0, f"{name}: gradient reaches target.{pname}"


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_dqn_all_done_is_plain_regression_on_reward(seed):
    q_net, target_net, t = _problem(seed, all_done=True)
    obs, action, reward, _, _ = t
    got = _package_loss("dqn", q_net, target_net, t)
    expected = ((_q_sa(q_net, obs, action) - reward) ** 2).mean()
    torch.testing.assert_close(got, expected, **EXACT)
