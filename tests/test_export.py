"""Exported losses (``evorl_nb.export``): a found loss written out as a standalone PyTorch file.

The deciding check: each exported file, imported in a fresh Python process in which
``evorl_nb`` cannot be imported, gives the loss value and the gradients ``Program.loss``
gives, in float64, on random batches and small networks, for every library program and
for random programs drawn from both search spaces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from evorl_nb import export as ex  # noqa: E402
from evorl_nb import library  # noqa: E402
from evorl_nb.program import Batch, Program  # noqa: E402
from evorl_nb.search_space import get_space, mutate, random_program  # noqa: E402

F64 = torch.float64
B, A, OBS, HIDDEN = 8, 3, 4, 16
N_RANDOM = 600  # per search space: 1,200 random programs in all
N_BATCHES = 2
GAMMA = 0.97

# Run in a fresh interpreter: evorl_nb is made unimportable before anything else runs, so
# an exported file that reached for it would fail there, not pass by accident here.
_RUNNER = textwrap.dedent('''
    import importlib.util, sys
    sys.modules["evorl_nb"] = None
    import torch

    def net():
        return torch.nn.Sequential(torch.nn.Linear({obs}, {hidden}), torch.nn.Tanh(),
                                   torch.nn.Linear({hidden}, {a})).to(torch.float64)

    data = torch.load(sys.argv[1])
    q_net, target_net = net(), net()
    q_net.load_state_dict(data["q"])
    target_net.load_state_dict(data["target"])
    out = []
    for k, path in enumerate(data["files"]):
        spec = importlib.util.spec_from_file_location(f"exported_{{k}}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        rows = []
        for j, batch in enumerate(data["batches"]):
            q_net.zero_grad()
            gen = torch.Generator().manual_seed(1000 * k + j)
            loss = module.loss(q_net, target_net, *batch, gamma={gamma}, generator=gen)
            if loss.requires_grad:
                loss.backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p)
                     for p in q_net.parameters()]
            rows.append((loss.detach(), torch.cat([g.flatten() for g in grads])))
        out.append(rows)
    torch.save(out, sys.argv[2])
''').format(obs=OBS, hidden=HIDDEN, a=A, gamma=GAMMA)


def _net(gen: torch.Generator) -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(OBS, HIDDEN), torch.nn.Tanh(),
                              torch.nn.Linear(HIDDEN, A)).to(F64)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.7)
    return net


def _batch(gen: torch.Generator) -> Batch:
    return Batch(obs=torch.randn(B, OBS, generator=gen, dtype=F64),
                 action=torch.randint(0, A, (B,), generator=gen),
                 reward=torch.randn(B, generator=gen, dtype=F64),
                 next_obs=torch.randn(B, OBS, generator=gen, dtype=F64),
                 done=(torch.rand(B, generator=gen) < 0.25).to(F64))


def _programs() -> list[Program]:
    rng = np.random.default_rng(22)
    progs = [library.get(n) for n in library.names()]
    for space in ("bootstrap", "scratch"):
        s = get_space(space)
        for _ in range(N_RANDOM):
            p = random_program(s, rng)
            # a bootstrapped draw is DQN behind dead nodes: mutate it so live graphs vary
            for _ in range(int(rng.integers(0, 6)) if space == "bootstrap" else 0):
                p = mutate(p, s, rng)
            progs.append(p)
    assert len({p.fingerprint() for p in progs}) > N_RANDOM  # many distinct losses
    return progs


def _reference(program: Program, q_net, target_net, batches, k: int):
    rows = []
    for j, batch in enumerate(batches):
        q_net.zero_grad()
        gen = torch.Generator().manual_seed(1000 * k + j)
        loss = program.loss(batch, q_net, target_net, gamma=GAMMA, generator=gen)
        if loss.requires_grad:
            loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in q_net.parameters()]
        rows.append((loss.detach(), torch.cat([g.flatten() for g in grads])))
    return rows


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-6, atol=1e-12, equal_nan=True)


def test_exported_files_match_program_loss_in_a_process_without_evorl_nb(tmp_path: Path):
    gen = torch.Generator().manual_seed(7)
    q_net, target_net = _net(gen), _net(gen)
    batches = [_batch(gen) for _ in range(N_BATCHES)]
    programs = _programs()
    files = []
    for k, program in enumerate(programs):
        path = tmp_path / f"loss_{k}.py"
        # annotate=False for the random ones: the lines are the same, only the sympy
        # comments and equation differ, and 1,200 sympy simplifications would take minutes
        path.write_text(ex.torch_source(program, annotate=k < len(library.names())))
        files.append(str(path))
    payload = tmp_path / "payload.pt"
    torch.save({"q": q_net.state_dict(), "target": target_net.state_dict(), "files": files,
                "batches": [tuple(b) for b in batches]}, payload)
    runner = tmp_path / "runner.py"
    runner.write_text(_RUNNER)
    result = tmp_path / "result.pt"
    done = subprocess.run([sys.executable, str(runner), str(payload), str(result)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(result)
    assert len(got) == len(programs)
    bad, finite = [], 0
    for k, program in enumerate(programs):
        want = _reference(program, q_net, target_net, batches, k)
        for (gl, gg), (wl, wg) in zip(got[k], want):
            if not (_close(gl, wl) and _close(gg, wg)):
                bad.append((k, program.prune(), float(gl), float(wl)))
                break
            finite += bool(torch.isfinite(wl))
    assert not bad, bad[:5]
    assert finite > len(programs)  # most losses are finite numbers, not NaN == NaN


def test_exported_dqn_reads_like_the_paper():
    text = ex.torch_source(library.get("dqn"))
    assert "\nimport evorl_nb" not in text and "\nfrom evorl_nb" not in text
    for line in ("q_s = q_net(obs)", "q_sa = q_s.gather(", "y = ", "delta = ", "return "):
        assert line in text, line
    assert "with torch.no_grad():\n        qt_next = target_net(next_obs)" in text
    assert library.get("dqn").fingerprint() in text
    assert "δ" in text  # the simplified equation in the docstring


def test_exported_loss_drops_dead_nodes_and_computes_shared_subgraphs_once():
    from evorl_nb.program import ProgramBuilder

    b = ProgramBuilder()
    q1 = b.QValues(0, 2)
    q2 = b.QValues(0, 2)  # the same sub-graph twice
    b.Exp(b.MaxList(q1))  # dead
    out = b.L2Distance(b.SelectList(q1, 1), b.SelectList(q2, 1))
    text = ex.torch_source(b.build(out))
    assert text.count("q_net(obs)") == 1
    assert "torch.exp" not in text


def test_export_formats_and_files(tmp_path: Path):
    prog = library.get("dqn_reg")
    path = tmp_path / "p.json"
    ex.export(prog, "json", path)
    assert Program.from_json(path.read_text()).fingerprint() == prog.fingerprint()
    assert "delta" in ex.export(prog, "latex") or "\\delta" in ex.export(prog, "latex")
    assert ex.export(prog, "torch") == prog.to_torch_source()
    with pytest.raises(ex.ExportError, match="unknown export format 'onnx'"):
        ex.export(prog, "onnx")
    json.loads(ex.export(prog, "json"))


# --- the command line ------------------------------------------------------------

DQNREG_RUN = Path(__file__).resolve().parents[1] / "docs" / "results" / "search" / "dqnreg"


def test_cli_exports_a_library_program_and_a_json_file(tmp_path: Path, capsys):
    from evorl_nb.cli import main

    out = tmp_path / "dqn_reg_loss.py"
    assert main(["export", "dqn_reg", "-o", str(out)]) == 0
    assert out.read_text() == library.get("dqn_reg").to_torch_source("dqn_reg")
    assert main(["export", "dqn_reg", "--format", "json", "-o", str(tmp_path / "p.json")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "p.json"), "--format", "latex"]) == 0
    assert "\\delta" in capsys.readouterr().out


def test_cli_exports_the_nth_program_of_a_rescored_run(tmp_path: Path, capsys):
    from evorl_nb.cli import main
    from evorl_nb.rescore import ranking

    table = ranking(DQNREG_RUN)
    found = table[~table["entry"].str.startswith("lib:")]
    for rank in (1, 2):
        out = tmp_path / f"r{rank}.py"
        assert main(["export", str(DQNREG_RUN), "--rank", str(rank), "-o", str(out)]) == 0
        want = Program.from_json(found.iloc[rank - 1]["program"])
        assert want.fingerprint() in out.read_text()
        assert f"rank {rank} by re-scored mean" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["export", "no_such_loss"], "neither a library program"),
    (["export", "dqn", "--rank", "2"], "--rank picks a program from a run folder"),
    (["export", "dqn", "--format", "onnx"], None),
    (["export", "dqn", "-o", "/no/such/folder/x.py"], "cannot write"),
    (["export", str(DQNREG_RUN), "--rank", "0"], "must be at least 1"),
    (["export", str(DQNREG_RUN), "--rank", "9999"], "rank 9999 is not among them"),
])
def test_cli_export_bad_input_exits_2_with_a_named_error(argv, message, capsys):
    from evorl_nb.cli import main

    assert main(argv) == 2
    if message:
        assert message in capsys.readouterr().err


# --- the CleanRL-style example ------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cleanrl_dqn_loss.py"


def test_cleanrl_style_example_trains_with_an_exported_loss_without_evorl_nb(tmp_path: Path):
    loss_file = tmp_path / "dqn_reg_loss.py"
    ex.export(library.get("dqn_reg"), "torch", loss_file)
    argv = [str(EXAMPLE), "--loss-file", str(loss_file), "--total-timesteps", "1500",
            "--learning-starts", "300", "--train-frequency", "2", "--batch-size", "32",
            "--target-network-frequency", "100", "--log-every", "500", "--seed", "3"]
    code = ("import runpy, sys; sys.modules['evorl_nb'] = None; "
            f"sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("step=")]
    assert [ln.split()[0] for ln in lines] == ["step=500", "step=1000", "step=1500"]
    last = dict(part.split("=") for part in lines[-1].replace("return(last 10)", "ret")
                .split())
    assert int(last["episodes"]) > 10 and int(last["SPS"]) > 0
    assert np.isfinite(float(last["mean_q"]))  # gradient steps ran and logged Q
