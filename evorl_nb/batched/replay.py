"""The population trainer's replay: one uniform buffer per slot, stored as stacked tensors."""

from __future__ import annotations

import numpy as np
import torch

from evorl_nb.streams import Streams

__all__ = ["Replay", "decode"]


def decode(raw: np.ndarray, divisor, device) -> torch.Tensor:
    """Raw observations as float32 on ``device``, divided by the env's ``divisor`` if any."""
    x = torch.as_tensor(raw).to(device=device, dtype=torch.float32)
    return x / divisor if divisor is not None else x


class Replay:
    """One uniform replay buffer per slot: ``[slots, n, ...]`` tensors that grow by doubling
    up to ``capacity``, raw observations (uint8 grid codes stay uint8), each slot with its
    own position and size.

    A transition is two rows: ``obs2[slot, i]`` holds s_t and s_{t+1} (``[2, D]``) and
    ``scalars[slot, i]`` the action, reward and done flag (float32), so sampling is two
    random-row gathers instead of five (at large K the buffers outgrow the cache, and each
    gathered row is a cache miss)."""

    def __init__(self, slots: int, capacity: int, obs_dim: int, obs_dtype, device):
        self.capacity = capacity
        self.size = np.zeros(slots, np.int64)
        self.pos = np.zeros(slots, np.int64)
        self.obs_dim, self.device = obs_dim, device
        self.obs_dtype = torch.from_numpy(np.zeros(0, dtype=obs_dtype)).dtype
        self.t: dict[str, torch.Tensor] = {}
        self._alloc(slots, min(capacity, 4096))

    def _alloc(self, slots: int, n: int) -> None:
        old = self.t
        d, dev = self.obs_dim, self.device
        self.t = {"obs2": torch.zeros(slots, n, 2, d, dtype=self.obs_dtype, device=dev),
                  "scalars": torch.zeros(slots, n, 3, dtype=torch.float32, device=dev)}
        if old:
            m = old["obs2"].shape[1]
            for k, v in old.items():
                self.t[k][:, :m] = v

    def reset(self, slot: int) -> None:
        """Empty one slot's buffer (a new agent took the slot)."""
        self.size[slot] = self.pos[slot] = 0

    def add(self, slots: np.ndarray, obs, action, reward, next_obs, terminated) -> None:
        """Store the transitions of ``slots`` (rows of the slot-indexed arrays)."""
        if not len(slots):
            return
        t = self.t
        n_slots, n = t["obs2"].shape[:2]
        pos = self.pos[slots]
        if pos.max() >= n and n < self.capacity:
            self._alloc(n_slots, min(2 * n, self.capacity))
            t = self.t
        dev = self.device
        fields = {"obs2": torch.from_numpy(np.stack([obs[slots], next_obs[slots]], 1)),
                  "scalars": torch.from_numpy(np.stack(
                      [action[slots], reward[slots], terminated[slots]], 1).astype(np.float32))}
        if len(slots) == n_slots and (pos == pos[0]).all():  # lockstep: one column
            i = int(pos[0])
            for k, v in fields.items():
                t[k][:, i] = v.to(dev)
        else:
            si = torch.as_tensor(slots, dtype=torch.long, device=dev)
            pi = torch.as_tensor(pos, dtype=torch.long, device=dev)
            for k, v in fields.items():
                t[k][si, pi] = v.to(dev)
        self.pos[slots] = (pos + 1) % self.capacity
        self.size[slots] = np.minimum(self.size[slots] + 1, self.capacity)

    def sample(self, slots: np.ndarray, learn: np.ndarray, batch_size: int, streams: Streams,
               divisor):
        """A batch per slot: obs/next_obs ``[n, B, D]`` float, action, reward, done ``[n, B]``.

        Where ``learn[j]``, slot ``slots[j]`` draws its indices from its stream in
        ``streams`` (as the single trainer's ``Replay.sample``); elsewhere index 0 and no
        draw (a row that is not learning now, whose batch is ignored)."""
        n, cap = len(slots), self.t["obs2"].shape[1]
        idx_np = np.zeros((n, batch_size), np.int64)
        drawing = slots[learn]
        idx_np[learn] = streams.integers(drawing, self.size[drawing], batch_size)
        idx = torch.from_numpy(idx_np).to(self.device)
        base = torch.as_tensor(slots, dtype=torch.long, device=self.device).unsqueeze(1) * cap
        flat = (idx + base).flatten()
        obs2, sc = (v.flatten(0, 1).index_select(0, flat).view(n, batch_size, *v.shape[2:])
                    for v in (self.t["obs2"], self.t["scalars"]))
        sc = sc.permute(2, 0, 1).contiguous()  # [3, n, B]: each field contiguous
        out = {"action": sc[0].long(), "reward": sc[1], "done": sc[2]}
        for j, k in enumerate(("obs", "next_obs")):
            x = obs2[:, :, j].to(torch.float32)
            out[k] = x / divisor if divisor is not None else x.contiguous()
        return out

