"""Batched classic control: CartPole-v0/v1, Acrobot-v1 and MountainCar-v0 stepped with numpy.

Each class steps ``num_envs`` copies at once and is *bit-exact* with
``make_env(env_id)`` (gymnasium's env + ``TimeLimit``): the same float32 observations,
rewards and terminated/truncated flags, step after step, with the seeding of
:mod:`evorl_nb.envs.vector` (``tests/test_vec_classic.py`` checks 10,000+ steps per env).

How exactness is kept
---------------------
* Same arithmetic, same order. gymnasium computes CartPole and Acrobot with numpy float64
  *scalars* and MountainCar with Python floats; elementwise numpy on float64 arrays does
  the same IEEE-754 double operations, so every expression below is written with the
  operands in gymnasium's order and grouping (constant sub-expressions such as
  ``m2 * l1 * lc2`` are folded by Python exactly as in gymnasium). Observations are
  rounded to float32 once, from the float64 state, as ``np.array(state, np.float32)`` does.
* Transcendentals. What gymnasium calls, and what matches it on arrays:

  - CartPole/Acrobot call ``np.cos``/``np.sin`` on float64 scalars, MountainCar calls
    ``math.cos``. On the development machine (AMD EPYC with AVX-512, glibc 2.36,
    numpy 2.4.6) numpy's float64 ``sin``/``cos`` loop calls libm per element (about
    18 ns/element, no SIMD approximation): over 600,000 values in [-40, 40] arrays,
    numpy scalars and ``math`` gave identical results. So plain ``np.cos`` is exact.
  - The trap is ``x**2``. Acrobot squares numpy float64 scalars (``dtheta2**2``,
    ``dtheta1**2``, ``d2**2``), and numpy's scalar power calls libm ``pow(x, 2.0)``, which
    is *not* always ``x*x`` (about 0.09% of values differ by one ulp with glibc 2.36),
    whereas ``array**2`` and ``np.power(array, 2.0)`` take a fast path to ``x*x``, and
    ``np.power`` with a contiguous exponent *array* uses an AVX-512 SVML kernel that
    differs from libm in about 3% of values. ``np.float_power(x, 2.0)`` runs numpy's
    generic loop around libm ``pow``: exact, about 13 ns/element. (CartPole uses
    ``np.square``, which is ``x*x`` everywhere.)
  - Acrobot's *reset* observation takes ``cos``/``sin`` of the float32 state (numpy
    float32 kernels, SIMD here); the same ufunc on float32 arrays gives the same values.

  Because these facts depend on the CPU, numpy and libm, :func:`kernel_report` probes
  every fast kernel once per process (about 20,000 values, tens of milliseconds) against
  the very call gymnasium makes, and falls back to an elementwise loop over that call
  (exact, slower) for any kernel that disagrees.
* Randomness. Env ``i`` owns the Generator ``gymnasium.utils.seeding.np_random(seeds[i])``
  that ``env.reset(seed=seeds[i])`` creates, and only resets draw from it. ``Generator.uniform``
  fills an array element by element from one stream (``low + (high - low) * next_double``),
  so drawing the initial states of the next :data:`RESET_BLOCK` episodes in one call gives
  the same values as drawing them one reset at a time; doing so keeps the per-env Python
  loop out of all but one reset in :data:`RESET_BLOCK`.
* Time limit. As gymnasium's ``TimeLimit``: a per-env step counter since the reset, and
  ``truncated = steps >= max_episode_steps`` (also when that step terminates, so both flags
  can be True, exactly as gymnasium reports it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np

from evorl_nb.envs.vector import VecStep, VectorEnv, _check_slots

__all__ = [
    "CartPoleVectorEnv", "AcrobotVectorEnv", "MountainCarVectorEnv", "VECTORIZED",
    "RESET_BLOCK", "kernel_report",
]

RESET_BLOCK = 32
"""Initial states drawn per env and per call to its Generator (see module docs)."""

_F32 = np.dtype(np.float32)


# ----------------------------------------------------------------------------- kernels

def _np_scalar_loop(fn: Callable, dtype) -> Callable[[np.ndarray], np.ndarray]:
    """``fn`` applied to each element as a numpy scalar (exactly gymnasium's call)."""
    def apply(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype)
        return np.fromiter((fn(v) for v in x), dtype, count=x.size)
    return apply


def _math_loop(fn: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """``fn`` (a ``math`` function) applied to each element as a Python float."""
    def apply(x: np.ndarray) -> np.ndarray:
        return np.fromiter(map(fn, np.asarray(x, np.float64).tolist()), np.float64, count=x.size)
    return apply


def _probe(dtype) -> np.ndarray:
    rng = np.random.default_rng(20240607)
    quarter = np.arange(-64, 65) * (math.pi / 4)
    parts = [
        rng.uniform(-0.25, 0.25, 4000),     # CartPole angles, Acrobot resets
        rng.uniform(-4.0, 4.0, 4000),        # angles, MountainCar's 3 * position
        rng.uniform(-30.0, 30.0, 6000),      # Acrobot velocities (squared)
        rng.uniform(-1e3, 1e3, 2000),
        quarter, np.nextafter(quarter, np.inf), np.nextafter(quarter, -np.inf),
        np.array([0.0, -0.0, 1e-300, 0.5, 1.0, 2.0, 3.0]),
    ]
    return np.concatenate(parts).astype(dtype)


def _square_np_scalar(v):
    return v ** 2  # numpy scalar power: libm pow(v, 2.0), as in Acrobot's _dsdt


# name -> (fast candidate, gymnasium's own call applied elementwise, dtype)
_KERNELS: dict[str, tuple[Callable, Callable, np.dtype]] = {
    "cos": (np.cos, _np_scalar_loop(np.cos, np.float64), np.dtype(np.float64)),
    "sin": (np.sin, _np_scalar_loop(np.sin, np.float64), np.dtype(np.float64)),
    "math_cos": (np.cos, _math_loop(math.cos), np.dtype(np.float64)),
    "pow2": (lambda x: np.float_power(x, 2.0), _np_scalar_loop(_square_np_scalar, np.float64),
             np.dtype(np.float64)),
    "cos32": (np.cos, _np_scalar_loop(np.cos, np.float32), _F32),
    "sin32": (np.sin, _np_scalar_loop(np.sin, np.float32), _F32),
}


@functools.cache
def _kernels() -> dict[str, tuple[Callable[[np.ndarray], np.ndarray], bool]]:
    chosen = {}
    for name, (fast, exact, dtype) in _KERNELS.items():
        x = _probe(dtype)
        with np.errstate(all="ignore"):
            ok = bool(np.array_equal(np.asarray(fast(x)).view(np.uint8),
                                     np.asarray(exact(x)).view(np.uint8)))
        chosen[name] = (fast if ok else exact, ok)
    return chosen


def kernel_report() -> dict[str, str]:
    """Which kernel each transcendental uses in this process: ``"fast"`` (the numpy ufunc
    matched gymnasium's call on every probe value) or ``"elementwise"`` (the fallback)."""
    return {k: "fast" if ok else "elementwise" for k, (_, ok) in _kernels().items()}


# ----------------------------------------------------------------------------- base

class _ClassicVectorEnv(VectorEnv):
    """Shared machinery: seeding, block-drawn resets, time limit, auto-reset."""

    ENV_IDS: tuple[str, ...] = ()
    obs_dtype = _F32
    obs_divisor = None

    def __init__(self, env_id: str, num_envs: int):
        import gymnasium as gym

        if env_id not in self.ENV_IDS:
            raise ValueError(f"{type(self).__name__} implements {self.ENV_IDS}, not {env_id!r}")
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.env_id = env_id
        self.num_envs = int(num_envs)
        self.max_episode_steps = int(gym.spec(env_id).max_episode_steps)
        k = _kernels()
        self._k = {name: fn for name, (fn, _) in k.items()}
        self._rngs: list[np.random.Generator] = []
        self._elapsed = np.zeros(self.num_envs, np.int64)
        self._started = False

    # --- subclass hooks
    def _draw(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """``k`` consecutive reset draws of one env, shape ``[k, ...]``."""
        raise NotImplementedError

    def _set_start(self, idx: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """Start episodes of envs ``idx`` from ``draws``; return their float32 obs."""
        raise NotImplementedError

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One physics step of every env: (float32 obs, float64 reward, terminated)."""
        raise NotImplementedError

    # --- resets
    def _refill(self, i: int) -> None:
        self._buf[i] = self._draw(self._rngs[i], RESET_BLOCK)
        self._ptr[i] = 0

    def _start(self, idx: np.ndarray) -> np.ndarray:
        for i in idx[self._ptr[idx] >= RESET_BLOCK].tolist():
            self._refill(i)
        draws = self._buf[idx, self._ptr[idx]]
        self._ptr[idx] += 1
        self._elapsed[idx] = 0
        return self._set_start(idx, draws)

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Seed env ``i`` with ``seeds[i]`` and return the first observations."""
        from gymnasium.utils import seeding

        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        self._rngs = [seeding.np_random(int(s))[0] for s in seeds]
        first = self._draw(self._rngs[0], RESET_BLOCK)
        self._buf = np.empty((self.num_envs,) + first.shape, first.dtype)
        self._buf[0] = first
        for i in range(1, self.num_envs):
            self._buf[i] = self._draw(self._rngs[i], RESET_BLOCK)
        self._ptr = np.zeros(self.num_envs, np.int64)
        self._started = True
        return self._start(np.arange(self.num_envs))

    def reset_at(self, slots: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        """Re-seed envs ``slots`` with ``seeds`` and return their first observations."""
        from gymnasium.utils import seeding

        if not self._started:
            raise RuntimeError("call reset(seeds) before reset_at()")
        slots, seeds = _check_slots(self.num_envs, slots, seeds)
        for i, s in zip(slots, seeds):
            self._rngs[i] = seeding.np_random(s)[0]
            self._refill(i)
        return self._start(np.asarray(slots, np.int64))

    # --- step
    def step(self, actions: np.ndarray) -> VecStep:
        """Step every env; ended episodes restart in the same call (``obs``)."""
        if not self._started:
            raise RuntimeError("call reset(seeds) before step()")
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iu":
            raise ValueError(f"actions must be an int array of shape ({self.num_envs},), "
                             f"got {a.dtype} {a.shape}")
        if a.min() < 0 or a.max() >= self.n_actions:
            raise ValueError(f"actions must lie in [0, {self.n_actions}), got {a.min()}..{a.max()}")
        next_obs, reward, terminated = self._advance(a.astype(np.intp, copy=False))
        self._elapsed += 1
        truncated = self._elapsed >= self.max_episode_steps
        obs = next_obs.copy()
        done = terminated | truncated
        if done.any():
            idx = np.flatnonzero(done)
            obs[idx] = self._start(idx)
        return VecStep(next_obs, reward, terminated, truncated, obs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env_id}, num_envs={self.num_envs})"


# ----------------------------------------------------------------------------- CartPole

class CartPoleVectorEnv(_ClassicVectorEnv):
    """CartPole-v0 (200 steps) / CartPole-v1 (500 steps), as gymnasium's ``CartPoleEnv``."""

    ENV_IDS = ("CartPole-v0", "CartPole-v1")
    obs_dim = 4
    n_actions = 2

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def __init__(self, env_id: str = "CartPole-v1", num_envs: int = 1):
        super().__init__(env_id, num_envs)
        self._state = np.zeros((4, self.num_envs), np.float64)  # rows: x, x_dot, theta, theta_dot
        self._reward = np.ones(self.num_envs, np.float64)

    def _draw(self, rng, k):
        return rng.uniform(low=-0.05, high=0.05, size=(k, 4))

    def _set_start(self, idx, draws):
        self._state[:, idx] = draws.T
        return draws.astype(np.float32)

    def _advance(self, actions):
        cos, sin = self._k["cos"], self._k["sin"]
        x, x_dot, theta, theta_dot = self._state
        force = np.where(actions == 1, self.force_mag, -self.force_mag)
        costheta = cos(theta)
        sintheta = sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        # Euler integration, as the default kinematics_integrator
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        state = np.stack((x, x_dot, theta, theta_dot))
        self._state = state
        terminated = ((x < -self.x_threshold) | (x > self.x_threshold)
                      | (theta < -self.theta_threshold_radians)
                      | (theta > self.theta_threshold_radians))
        return state.T.astype(np.float32, order="C"), self._reward.copy(), terminated


# ----------------------------------------------------------------------------- Acrobot

class AcrobotVectorEnv(_ClassicVectorEnv):
    """Acrobot-v1 (500 steps), as gymnasium's ``AcrobotEnv`` ("book" dynamics, RK4)."""

    ENV_IDS = ("Acrobot-v1",)
    obs_dim = 6
    n_actions = 3

    dt = 0.2
    LINK_LENGTH_1 = 1.0
    LINK_MASS_1 = 1.0
    LINK_MASS_2 = 1.0
    LINK_COM_POS_1 = 0.5
    LINK_COM_POS_2 = 0.5
    LINK_MOI = 1.0
    MAX_VEL_1 = 4 * math.pi
    MAX_VEL_2 = 9 * math.pi
    AVAIL_TORQUE = (-1.0, 0.0, +1)

    def __init__(self, env_id: str = "Acrobot-v1", num_envs: int = 1):
        super().__init__(env_id, num_envs)
        self._state = np.zeros((4, self.num_envs), np.float64)  # theta1, theta2, dtheta1, dtheta2
        self._torque = np.array(self.AVAIL_TORQUE, np.float64)

    def _draw(self, rng, k):
        return rng.uniform(low=-0.1, high=0.1, size=(k, 4)).astype(np.float32)

    def _set_start(self, idx, draws):
        # gymnasium keeps the reset state in float32: its first observation takes float32
        # cos/sin, its first step upcasts exactly (np.append with the float64 torque).
        self._state[:, idx] = draws.T
        th1, th2 = np.ascontiguousarray(draws[:, 0]), np.ascontiguousarray(draws[:, 1])
        cos32, sin32 = self._k["cos32"], self._k["sin32"]
        return np.stack((cos32(th1), sin32(th1), cos32(th2), sin32(th2),
                         draws[:, 2], draws[:, 3]), axis=1).astype(np.float32)

    def _dsdt(self, theta1, theta2, dtheta1, dtheta2, a):
        cos, sin, pow2 = self._k["cos"], self._k["sin"], self._k["pow2"]
        pi = math.pi
        m1 = self.LINK_MASS_1
        m2 = self.LINK_MASS_2
        l1 = self.LINK_LENGTH_1
        lc1 = self.LINK_COM_POS_1
        lc2 = self.LINK_COM_POS_2
        I1 = self.LINK_MOI
        I2 = self.LINK_MOI
        g = 9.8
        cos_t2 = cos(theta2)
        sin_t2 = sin(theta2)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos_t2) + I1 + I2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos_t2) + I2
        phi2 = m2 * lc2 * g * cos(theta1 + theta2 - pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * pow2(dtheta2) * sin_t2
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin_t2
            + (m1 * lc1 + m2 * l1) * g * cos(theta1 - pi / 2)
            + phi2
        )
        ddtheta2 = (
            a + d2 / d1 * phi1 - m2 * l1 * lc2 * pow2(dtheta1) * sin_t2 - phi2
        ) / (m2 * lc2**2 + I2 - pow2(d2) / d1)
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return dtheta1, dtheta2, ddtheta1, ddtheta2

    @staticmethod
    def _wrap(x, m, M):
        diff = M - m
        while True:
            over = x > M
            if not over.any():
                break
            x = np.where(over, x - diff, x)
        while True:
            under = x < m
            if not under.any():
                break
            x = np.where(under, x + diff, x)
        return x

    def _advance(self, actions):
        cos, sin = self._k["cos"], self._k["sin"]
        a = self._torque[actions]
        y0 = tuple(self._state)
        # rk4(derivs, y0, [0, dt]): one step; the torque component has derivative 0
        t0, t1 = 0, self.dt
        dt = t1 - t0
        dt2 = dt / 2.0
        k1 = self._dsdt(*y0, a)
        k2 = self._dsdt(*[y + dt2 * k for y, k in zip(y0, k1, strict=True)], a)
        k3 = self._dsdt(*[y + dt2 * k for y, k in zip(y0, k2, strict=True)], a)
        k4 = self._dsdt(*[y + dt * k for y, k in zip(y0, k3, strict=True)], a)
        w = dt / 6.0
        th1, th2, dth1, dth2 = (y + w * (p + 2 * q + 2 * r + s)
                                for y, p, q, r, s in zip(y0, k1, k2, k3, k4, strict=True))
        th1 = self._wrap(th1, -math.pi, math.pi)
        th2 = self._wrap(th2, -math.pi, math.pi)
        dth1 = np.minimum(np.maximum(dth1, -self.MAX_VEL_1), self.MAX_VEL_1)
        dth2 = np.minimum(np.maximum(dth2, -self.MAX_VEL_2), self.MAX_VEL_2)
        self._state = np.stack((th1, th2, dth1, dth2))
        c1, c2 = cos(th1), cos(th2)
        terminated = -c1 - cos(th2 + th1) > 1.0
        reward = np.where(terminated, 0.0, -1.0)
        obs = np.stack((c1, sin(th1), c2, sin(th2), dth1, dth2), axis=1).astype(np.float32)
        return obs, reward, terminated


# ----------------------------------------------------------------------------- MountainCar

class MountainCarVectorEnv(_ClassicVectorEnv):
    """MountainCar-v0 (200 steps), as gymnasium's ``MountainCarEnv``."""

    ENV_IDS = ("MountainCar-v0",)
    obs_dim = 2
    n_actions = 3

    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position = 0.5
    goal_velocity = 0
    force = 0.001
    gravity = 0.0025

    def __init__(self, env_id: str = "MountainCar-v0", num_envs: int = 1):
        super().__init__(env_id, num_envs)
        self._pos = np.zeros(self.num_envs, np.float64)
        self._vel = np.zeros(self.num_envs, np.float64)
        self._push = (np.arange(3) - 1) * self.force  # (action - 1) * force
        self._reward = np.full(self.num_envs, -1.0)

    def _draw(self, rng, k):
        return rng.uniform(low=-0.6, high=-0.4, size=k)

    def _set_start(self, idx, draws):
        self._pos[idx] = draws
        self._vel[idx] = 0.0
        return np.stack((draws, np.zeros_like(draws)), axis=1).astype(np.float32)

    def _advance(self, actions):
        mcos = self._k["math_cos"]
        position, velocity = self._pos, self._vel
        velocity = velocity + (self._push[actions] + mcos(3 * position) * (-self.gravity))
        velocity = np.minimum(np.maximum(velocity, -self.max_speed), self.max_speed)
        position = position + velocity
        position = np.minimum(np.maximum(position, self.min_position), self.max_position)
        velocity = np.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        self._pos, self._vel = position, velocity
        obs = np.stack((position, velocity), axis=1).astype(np.float32)
        return obs, self._reward.copy(), terminated


VECTORIZED: dict[str, Callable[[str, int], VectorEnv]] = {
    "CartPole-v0": CartPoleVectorEnv,
    "CartPole-v1": CartPoleVectorEnv,
    "Acrobot-v1": AcrobotVectorEnv,
    "MountainCar-v0": MountainCarVectorEnv,
}
"""Canonical env id -> ``factory(env_id, num_envs)`` (read by :func:`make_vector_env`)."""
