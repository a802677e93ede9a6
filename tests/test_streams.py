"""Counter-based per-agent streams: the published SplitMix64 values, draw-order independence,
uniformity, and independence between streams."""

import numpy as np
import pytest

from evorl_nb.streams import Stream, Streams, agent_seeds


def _raw(u: np.ndarray) -> list[int]:
    """The top 53 bits of each 64-bit output, back from the uniform numbers."""
    return [int(x * 2.0**53) for x in u]


def test_a_stream_is_splitmix64_from_its_key():
    # SplitMix64 seeded with 1234567: the reference outputs of its published implementation
    expected = [6457827717110365317, 3203168211198807973, 9817491932198370423]
    s = Streams(1)
    s.seed(0, 1234567)
    assert _raw(s.uniform(np.array([0]), 3)[0]) == [e >> 11 for e in expected]
    s.seed(0, 0)  # and seeded with 0: 0xE220A8397B1DCDAF first
    assert _raw(s.uniform(np.array([0]), 1)[0]) == [0xE220A8397B1DCDAF >> 11]


def test_numbers_do_not_depend_on_how_they_are_drawn():
    keys = [agent_seeds(i).explore for i in range(5)]
    alone = []
    for k in keys:
        s = Streams(1)
        s.seed(0, k)
        alone.append(s.uniform(np.array([0]), 40)[0])
    together = Streams(5)
    for r, k in enumerate(keys):
        together.seed(r, k)
    # all rows at once, a few at a time, and a subset of rows in between
    parts = [together.uniform(np.arange(5), 7), together.uniform(np.arange(5), 1)]
    odd = together.uniform(np.array([1, 3]), 32)
    rest = together.uniform(np.array([0, 2, 4]), 32)
    got = np.concatenate(parts, axis=1)
    for r in range(5):
        tail = odd[[1, 3].index(r)] if r in (1, 3) else rest[[0, 2, 4].index(r)]
        np.testing.assert_array_equal(np.concatenate([got[r], tail]), alone[r])
    one = Stream(keys[2], block=16)  # the buffered one-agent stream, across block edges
    drawn = np.concatenate([one.uniform(n) for n in (2, 15, 1, 20, 2)])
    np.testing.assert_array_equal(drawn, alone[2])


def test_integers_are_in_range_and_agree_between_both_stream_kinds():
    s = Streams(3)
    for r in range(3):
        s.seed(r, agent_seeds(10 + r).sample)
    highs = np.array([1, 7, 100_000])
    x = s.integers(np.arange(3), highs, 5000)
    assert (x >= 0).all() and (x < highs[:, None]).all()
    assert (x[0] == 0).all() and set(np.unique(x[1])) == set(range(7))
    one = Stream(agent_seeds(11).sample)
    np.testing.assert_array_equal(one.integers(7, 5000), x[1])


def test_numbers_are_uniform_and_streams_uncorrelated():
    s = Streams(64)
    for r in range(64):
        s.seed(r, agent_seeds(r).explore)
    u = s.uniform(np.arange(64), 4096)  # [64 streams, 4096]
    # every stream and the whole: chi-square over 16 bins (15 dof; 99.9% quantile 37.7)
    counts = np.stack([np.bincount((row * 16).astype(int), minlength=16) for row in u])
    chi = ((counts - 256.0) ** 2 / 256.0).sum(1)
    assert np.median(chi) < 25 and chi.max() < 60
    total = counts.sum(0)
    assert ((total - total.mean()) ** 2 / total.mean()).sum() < 37.7
    # neighbouring numbers and neighbouring streams (seeds 0, 1, ...) are uncorrelated
    lag = [np.corrcoef(row[:-1], row[1:])[0, 1] for row in u]
    across = np.corrcoef(u)[np.triu_indices(64, 1)]
    assert np.abs(lag).max() < 0.07 and np.abs(across).max() < 0.07  # 4.5 sigma at n=4096


def test_agent_seeds_are_fixed_by_the_seed_and_differ_between_agents():
    a, b = agent_seeds(3), agent_seeds(3)
    assert a == b and a != agent_seeds(4)
    assert a.explore != a.sample
    keys = {k for i in range(1000) for k in agent_seeds(i)[:2]}
    assert len(keys) == 2000
    assert 0 <= a.env < 2**31


@pytest.mark.parametrize("n", [0, 1])
def test_zero_rows_or_numbers(n):
    s = Streams(2)
    assert s.uniform(np.array([], np.int64), 3).shape == (0, 3)
    assert s.uniform(np.array([0, 1]), n).shape == (2, n)
