"""Environments a loss program is scored on: registry, normalization ranges, factories.

>>> from evorl_nb.envs import get_spec, make_env
>>> spec = get_spec("CartPole-v0")
>>> (spec.rmin, spec.rmax, spec.budget_episodes, spec.epsilon_decay_steps)
(0.0, 200.0, 400, 1000)
>>> float(spec.normalize(150.0))
0.75
>>> get_spec("DoorKey-5x5").env_id
'MiniGrid-DoorKey-5x5-v0'
>>> env = make_env("MiniGrid-DoorKey-5x5-v0", seed=0)
>>> obs, info = env.reset(seed=0)
>>> obs.shape, obs.dtype.name, int(env.action_space.n)
((75,), 'float32', 7)

See :mod:`evorl_nb.envs.registry` (lookup, aliases, seeding), :mod:`evorl_nb.envs.wrappers`
(the MiniGrid observation and its scaling) and :mod:`evorl_nb.envs.catalog` (the numbers).
To add an environment::

    from evorl_nb.envs import EnvSpec, register
    register(EnvSpec(env_id="MyEnv-v0", rmin=0, rmax=1, budget_episodes=300,
                     family="custom", make=my_factory))
"""

from evorl_nb.envs.catalog import BUILTIN_SPECS, register_builtins
from evorl_nb.envs.registry import (
    AmbiguousEnvError,
    EnvSpec,
    MissingDependencyError,
    UnknownEnvError,
    env_ids,
    get_spec,
    make_env,
    register,
    unregister,
)

register_builtins()

__all__ = [
    "AmbiguousEnvError",
    "BUILTIN_SPECS",
    "EnvSpec",
    "MissingDependencyError",
    "UnknownEnvError",
    "env_ids",
    "get_spec",
    "make_env",
    "register",
    "unregister",
]
