"""Rejection sampling for all slots of a batched MiniGrid at once, from their own streams.

minigrid places objects by rejection sampling (``place_obj``: draw x then y from the env's
``np_random`` until the cell is free) and Dynamic-Obstacles moves its balls that way on
every step (in the 3x3 square around each ball, at most 101 tries), so every slot's stream
must be consumed exactly as minigrid does.  :class:`SlotSampling` does it for many slots
at once: each slot's stream lives in a :class:`~evorl_nb.envs.pcg64_streams.PCGStreams`
(``self._rng``), a round of tries is read for all slots still looking, the first accepted
try is taken and each slot advances by exactly what numpy would have drawn.  A word numpy
would reject and redraw (Lemire) sends that slot to a scalar path running numpy's own
``Generator.integers`` on the same state, so the stream is exact in every case.
"""

from __future__ import annotations

import numpy as np

from evorl_nb.envs.minigrid_codes import EMPTY
from evorl_nb.envs.pcg64_streams import LO32, U32, PCGStreams, lemire_threshold


class SlotSampling:
    """The random draws of :class:`~evorl_nb.envs.vec_minigrid.MiniGridVec`, mixed into it.

    Reads the env's arrays (``grid``/``_gflat``, ``_rowbase``, ``agent_x``/``agent_y``,
    ``height``, ``cells``, ``envs``, ``num_envs``, ``obstacles``, ``n_obstacles``) and its
    settings ``tries_per_round`` and ``_force_scalar`` (tests: every draw through numpy's
    own Generator).  Kept apart from the step rules because it is where the streams are
    consumed, which is what must match minigrid word for word.
    """

    def _init_streams(self, n: int) -> None:
        """Give the ``n`` slots their streams (continued from their envs at reset)."""
        self._rng = PCGStreams(n)
        self._scratch_gen = np.random.Generator(np.random.PCG64(0))
        self._force_scalar = False  # tests: run every draw through numpy's own Generator

    def _pull_rng(self, i: int) -> None:
        """Continue slot ``i``'s stream from its env's generator."""
        self._rng.set(i, self.envs[i].np_random.bit_generator.state)

    def _rng_state(self, i: int) -> dict:
        """Slot ``i``'s stream state, as its env's ``np_random.bit_generator.state``."""
        return self._rng.get(i)

    def _push_rng(self, i: int, gen: np.random.Generator | None = None) -> np.random.Generator:
        """Write slot ``i``'s stream state into ``gen`` (default: its env's generator)."""
        gen = self.envs[i].np_random if gen is None else gen
        gen.bit_generator.state = self._rng.get(i)
        return gen

    def _draw(self, idx: np.ndarray, low: int, r: int) -> np.ndarray:
        """``np_random.integers(low, low + r)`` for each slot in ``idx`` (one draw each)."""
        if r == 1:
            return np.full(len(idx), low, np.int64)  # numpy draws nothing for one value
        rng = self._rng
        rng.ensure(idx, 1)
        q = rng.pos[idx]
        mr = rng.words[idx, q] * np.uint64(r)
        out = low + (mr >> U32).astype(np.int64)
        rng.pos[idx] = q + 1
        thr = (1 << 32) % r  # == (2**32 - r) % r
        redo = np.flatnonzero((mr & LO32) < np.uint64(thr)) if thr else np.zeros(0, np.int64)
        if self._force_scalar:
            redo = np.arange(len(idx))
        for k in redo.tolist():
            i = int(idx[k])
            rng.pos[i] = q[k]
            gen = self._push_rng(i, self._scratch_gen)
            out[k] = int(gen.integers(low, low + r))
            rng.set(i, gen.bit_generator.state)
        return out

    def _place(self, idx, lx, rx, ly, ry, max_tries, *, not_next_to_agent=False):
        """``MiniGridEnv.place_obj(obj, top=(lx, ly), size=(rx, ry), max_tries)`` for slots
        ``idx`` (``lx``, ``ly`` arrays, ``rx``, ``ry`` ints or arrays): a try is rejected when
        its cell is not empty or is the agent's (and, with ``not_next_to_agent``, when
        roomgrid's ``reject_next_to`` rejects it).  Returns (ok, x, y) as :meth:`_sample`."""
        m = len(idx)
        H = self.height
        RX = rx if isinstance(rx, int) else (int(rx.max()) if m else 1)
        RY = ry if isinstance(ry, int) else (int(ry.max()) if m else 1)
        # which cells of the rectangle a try may land on: free[slot, dx * RY + dy]
        cx = lx[:, None, None] + np.arange(RX)[None, :, None]
        cy = ly[:, None, None] + np.arange(RY)[None, None, :]
        cells = np.minimum(cx * H + cy, self.cells - 1).reshape(m, RX * RY)
        ax, ay = self.agent_x[idx, None], self.agent_y[idx, None]
        free = ((self._gflat[self._rowbase[idx, None] + cells * 3] == EMPTY)
                & (cells != ax * H + ay))
        if not_next_to_agent:
            dist = (np.abs(cx - ax[:, :, None]) + np.abs(cy - ay[:, :, None])).reshape(m, -1)
            free &= dist >= 2
        return self._sample(idx, lx, rx, ly, ry, free, max_tries)

    def _sample(self, idx, lx, rx, ly, ry, free, max_tries):
        """Rejection sampling as minigrid's loops do it: each try draws
        ``x = np_random.integers(lx, lx + rx)`` then ``y = np_random.integers(ly, ly + ry)``
        and is accepted where ``free[slot, (x - lx) * RY + (y - ly)]`` (``RY = max(ry)``);
        at most ``max_tries + 1`` tries.  Advances each slot's stream exactly as numpy does.
        Returns (ok, x, y): ok False where every try was rejected."""
        m = len(idx)
        ok = np.zeros(m, bool)
        px = np.zeros(m, np.int64)
        py = np.zeros(m, np.int64)
        if m == 0:
            return ok, px, py
        if isinstance(rx, int) and isinstance(ry, int):  # one range for all slots
            RX, RY = rx, ry
            square, one = RX == RY, RX == 1 or RY == 1
            rx, ry = np.full(m, RX, np.int64), np.full(m, RY, np.int64)
        else:
            rx = np.broadcast_to(np.asarray(rx, np.int64), (m,))
            ry = np.broadcast_to(np.asarray(ry, np.int64), (m,))
            RX, RY = int(rx.max()), int(ry.max())
            square = RX == RY and bool((rx == RX).all() and (ry == RY).all())
            one = bool((rx == 1).any() or (ry == 1).any())
        if isinstance(max_tries, int):
            left = np.full(m, max_tries + 1, np.int64)
        else:
            left = np.asarray(max_tries, np.int64) + 1
        if one or self._force_scalar:
            # a one-value draw takes no word: leave such (never used here) cases to numpy
            for k in range(m):
                ok[k], px[k], py[k] = self._sample_scalar(
                    int(idx[k]), int(lx[k]), int(rx[k]), int(ly[k]), int(ry[k]), free[k], RY,
                    int(left[k]))
            return ok, px, py
        free_flat = free.reshape(-1)
        if square:
            r64, thr = np.uint64(RX), np.uint64((1 << 32) % RX)
        else:
            rx64, ry64 = rx.astype(np.uint64)[:, None], ry.astype(np.uint64)[:, None]
            thr_x, thr_y = lemire_threshold(rx)[:, None], lemire_threshold(ry)[:, None]
        rng = self._rng
        T = min(self.tries_per_round or 8, rng.k // 2)
        active = np.arange(m)
        while active.size:
            steps = np.arange(2 * T)[None, :]
            e = idx[active]
            rng.ensure(e, 2 * T)
            # the next 2T words: try t draws x from word 2t and y from word 2t + 1
            words = rng.flat_words[(e * rng.width + rng.pos[e])[:, None] + steps]
            if square:  # one range for every draw (obstacle moves, square layouts)
                mw = words * r64
                mx, my = mw[:, 0::2], mw[:, 1::2]
                scalar = ((mw & LO32) < thr).any(1) if thr else None
            else:
                mx = words[:, 0::2] * rx64[active]
                my = words[:, 1::2] * ry64[active]
                scalar = (((mx & LO32) < thr_x[active])
                          | ((my & LO32) < thr_y[active])).any(1)
            dx = (mx >> U32).astype(np.int64)
            dy = (my >> U32).astype(np.int64)
            hit = free_flat[(active * (RX * RY))[:, None] + dx * RY + dy]
            left_a = left[active]
            if left_a.min() < T:
                hit &= steps[:, :T] < left_a[:, None]
            found = hit.any(1)
            first = hit.argmax(1)
            used = np.where(found, first + 1, np.minimum(T, left_a))
            if scalar is not None and scalar.any():
                # a word numpy would reject and redraw (Lemire): redo those slots exactly
                for r in np.flatnonzero(scalar).tolist():
                    slot = active[r]
                    ok[slot], px[slot], py[slot] = self._sample_scalar(
                        int(idx[slot]), int(lx[slot]), int(rx[slot]), int(ly[slot]),
                        int(ry[slot]), free[slot], RY, int(left[slot]))
                keep = ~scalar
                left[active[scalar]] = 0
                active, e, found, first, used, dx, dy = (
                    x[keep] for x in (active, e, found, first, used, dx, dy))
            rng.pos[e] += 2 * used
            left[active] -= used
            won = np.flatnonzero(found)
            slots = active[won]
            ok[slots] = True
            px[slots] = lx[slots] + dx[won, first[won]]
            py[slots] = ly[slots] + dy[won, first[won]]
            active = active[~found]
            active = active[left[active] > 0]
            T = min(4 * T, rng.k // 2)  # the few slots left get longer rounds
        return ok, px, py

    def _sample_scalar(self, i, lx, rx, ly, ry, free_row, RY, tries):
        """One slot's tries drawn by numpy's own Generator (the exact fallback)."""
        gen = self._push_rng(i, self._scratch_gen)
        found = (False, 0, 0)
        for _ in range(min(tries, 1 << 20)):
            x = int(gen.integers(lx, lx + rx))
            y = int(gen.integers(ly, ly + ry))
            if free_row[(x - lx) * RY + (y - ly)]:
                found = (True, x, y)
                break
        self._rng.set(i, gen.bit_generator.state)
        return found

    # ---------------------------------------------------------------- Dynamic-Obstacles
    def _move_obstacles(self) -> None:
        """DynamicObstaclesEnv.step: each ball tries ``place_obj`` in its 3x3 square.

        Balls never stand on the border walls, so every square is whole (x and y both
        drawn from 3 values, one word each).  Rounds of tries for all slots still looking
        settle them (8 tries, then 32, then the rest of the 101); a ball with no free cell
        around it spends all 101 tries (202 words) and stays; a word numpy would redraw
        (Lemire) sends that slot to numpy's own generator."""
        n, H = self.num_envs, self.height
        rng = self._rng
        rng.refill(np.flatnonzero(rng.pos > rng.width // 2))  # refill in batches
        grid3 = self.grid.reshape(n, self.cells, 3)
        rows = np.arange(n)
        agent = self.agent_x * H + self.agent_y
        if not hasattr(self, "_nbr"):
            self._nbr = np.array([(dx - 1) * H + dy - 1 for dx in range(3) for dy in range(3)])
        tries = 101  # place_obj(max_tries=100)
        for k in range(self.n_obstacles):
            old = self.obstacles[:, k]
            cand = old[:, None] + self._nbr  # [n, 9]: the square, x-major
            free = (grid3[rows[:, None], cand, 0] == EMPTY) & (cand != agent[:, None])
            new = np.full(n, -1, np.int64)
            trapped = ~free.any(1)
            active = rows[~trapped] if trapped.any() else rows
            left = np.full(n, tries, np.int64)
            T = min(self.tries_per_round or 8, rng.k // 2)
            while active.size:
                rng.ensure(active, 2 * T)
                at = (active * rng.width + rng.pos[active])[:, None] + np.arange(2 * T)
                mw = rng.flat_words[at] * np.uint64(3)
                redraw = ((mw & LO32) == 0).any(1)  # Lemire: 3 * word % 2**32 < 1
                if self._force_scalar:
                    redraw[:] = True
                pick = (mw >> U32).astype(np.int64)
                pick = pick[:, 0::2] * 3 + pick[:, 1::2]  # [m, T]: square index of each try
                hit = np.take_along_axis(free[active], pick, 1)
                left_a = left[active]
                if left_a.min() < T:
                    hit &= np.arange(T) < left_a[:, None]
                found = hit.any(1)
                first = hit.argmax(1)
                done = found & ~redraw
                d, r = active[done], np.flatnonzero(done)
                new[d] = cand[d, pick[r, first[r]]]
                rng.pos[d] += 2 * (first[r] + 1)
                missed = ~found & ~redraw
                spent = np.minimum(T, left_a[missed])
                rng.pos[active[missed]] += 2 * spent
                left[active[missed]] -= spent
                for i in active[redraw].tolist():  # numpy's own generator, same state
                    ok, x, y = self._sample_scalar(i, int(old[i] // H - 1), 3,
                                                   int(old[i] % H - 1), 3, free[i], 3,
                                                   int(left[i]))
                    if ok:
                        new[i] = x * H + y
                active = active[missed]
                active = active[left[active] > 0]
                T = min(4 * T, rng.k // 2)
            if trapped.any():  # every try rejected: 101 x and y words, nothing moves
                stuck = rows[trapped]
                rng.ensure(stuck, 2 * tries)
                at = (stuck * rng.width + rng.pos[stuck])[:, None] + np.arange(2 * tries)
                redraw = ((rng.flat_words[at] * np.uint64(3)) & LO32 == 0).any(1)
                if self._force_scalar:
                    redraw[:] = True
                rng.pos[stuck[~redraw]] += 2 * tries
                for i in stuck[redraw].tolist():
                    self._sample_scalar(i, int(old[i] // H - 1), 3, int(old[i] % H - 1), 3,
                                        free[i], 3, tries)
            moved = np.flatnonzero(new >= 0)
            grid3[moved, new[moved]] = grid3[moved, old[moved]]
            grid3[moved, old[moved]] = (EMPTY, 0, 0)
            self.obstacles[moved, k] = new[moved]
