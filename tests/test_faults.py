"""Faults and bad input: dead workers, two writers on one run, and a corpus of bad program
files, run stores and flags, each meeting a named error (exit code 2 from the CLI), never a
traceback, and never losing finished work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import FakeEvaluator

from evorl_nb import library
from evorl_nb.backends import LocalBackend
from evorl_nb.store import RunStore, load_run

TESTS = Path(__file__).parent


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(entry.name))
    return kids


# ------------------------------------------------------------------------- workers


def test_an_idle_local_worker_killed_is_replaced_and_its_next_task_runs():
    backend = LocalBackend(workers=2, timeout=60)
    try:
        victim = backend.workers[0]
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.join(10)
        assert not victim.proc.is_alive()
        programs = [library.get(name) for name in ("dqn", "ddqn", "dqn_reg", "dqn_clipped")]
        ev = FakeEvaluator()
        done = {}
        for i, p in enumerate(programs):
            while backend.free() == 0:
                done.update(backend.wait())
            backend.submit(f"c{i}", ev, p, 0)
        while len(done) < len(programs):
            done.update(backend.wait())
        assert sorted(done) == ["c0", "c1", "c2", "c3"]
        assert all(out.status == "trained" for out in done.values())
        assert victim not in backend.workers  # replaced
    finally:
        backend.close()


SEARCH_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from fakes import FakeEvaluator
from evorl_nb.evolve import get_preset
from evorl_nb.runner import start
cfg = get_preset("ci", population=8, tournament=3, candidates={n}, envs=("CartPole-v0",),
                 hurdle=None, trainer="ci", width=1)
start({out!r}, cfg, seed=3, backend="local", workers=2, evaluator=FakeEvaluator(sleep={sleep}),
      progress=False, verbose=False)
"""


def test_search_survives_workers_killed_at_random_times(tmp_path):
    """kill -9 of local workers, busy or idle, while a real search runs: the driver replaces
    them and the run ends at its budget with every candidate recorded exactly once."""
    # 80 candidates of 0.3 s on 2 workers: ~12 s, long enough for 4 kills however fast a
    # replaced worker starts
    out, n = tmp_path / "run", 80
    proc = subprocess.Popen([sys.executable, "-c", SEARCH_SCRIPT.format(
                             tests=str(TESTS), out=str(out), n=n, sleep=0.3)],
                            stderr=subprocess.PIPE, text=True)
    store_file, kills, deadline = out / "run.sqlite", 0, time.time() + 120
    try:
        while kills < 4 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.6)
            recorded = 0
            if store_file.exists():
                try:
                    with RunStore.open(store_file, readonly=True) as s:
                        recorded = s.count()
                except Exception:
                    pass
            workers = _children(proc.pid)
            if recorded >= 5 + 10 * kills and workers:
                os.kill(workers[kills % len(workers)], signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert kills >= 3
    assert "Traceback" not in err, err
    df = load_run(store_file).candidates
    assert len(df) == n and df.proposal.is_unique and list(df.id) == list(range(1, n + 1))
    # a killed candidate is retried on a fresh worker; only a second death fails it
    assert (df.status == "failed").sum() <= kills


def test_workers_of_a_killed_driver_exit_quietly(tmp_path):
    """kill -9 of the driver: its workers notice the closed pipe and exit without a
    traceback (they share the driver's stderr, so the pipe closes only when all have gone)."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c",
                             SEARCH_SCRIPT.format(tests=str(TESTS), out=str(out), n=400,
                                                  sleep=0.15)],
                            stderr=subprocess.PIPE, text=True)
    store_file, deadline = out / "run.sqlite", time.time() + 60
    workers = []
    while time.time() < deadline:
        time.sleep(0.3)
        workers = _children(proc.pid)
        if len(workers) >= 2 and store_file.exists():
            break
    assert len(workers) >= 2, workers  # two workers (and multiprocessing's resource tracker)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)  # returns once every worker has closed stderr
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    end = time.time() + 15
    while (left := [w for w in workers if _alive(w)]) and time.time() < end:
        time.sleep(0.2)  # exiting (reaped by init once it has gone)
    assert not left, [Path(f"/proc/{w}/cmdline").read_text() for w in left]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


# ------------------------------------------------------------------- one writer per run

HOLD_SCRIPT = """
import sys, time
from evorl_nb.store import RunStore
s = RunStore.open({path!r})
print("holding", flush=True)
time.sleep(600)
"""


def _hold(path) -> subprocess.Popen:
    """Another process holding ``path`` open for writing (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT.format(path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


@pytest.fixture
def finished_run(tmp_path):
    from evorl_nb.evolve import get_preset
    from evorl_nb.runner import start

    cfg = get_preset("ci", population=4, tournament=2, candidates=6, envs=("CartPole-v0",),
                     hurdle=None, trainer="ci")
    return start(tmp_path / "run", cfg, seed=0, evaluator=FakeEvaluator(), progress=False,
                 verbose=False)


def test_a_second_writer_is_refused_readers_are_not_and_a_kill_9_leaves_no_stale_lock(
        finished_run):
    from evorl_nb.store import RunLocked

    holder = _hold(finished_run)
    try:
        with pytest.raises(RunLocked, match=rf"being written by pid {holder.pid}"):
            RunStore.open(finished_run)
        assert len(load_run(finished_run).candidates) == 6  # readers keep working
        with RunStore.open(finished_run, readonly=True) as s:
            assert s.count() == 6
    finally:
        holder.kill()
        holder.wait()
    with RunStore.open(finished_run) as s:  # the killed holder's lock went with it
        assert s.count() == 6
    with RunStore.open(finished_run) as s:  # and closing releases it
        s.set_meta("note", "x")


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "evorl_nb.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_resume_and_rescore_refuse_a_run_being_written(finished_run):
    holder = _hold(finished_run)
    try:
        for cmd in (["resume", finished_run.parent, "--candidates", "8"],
                    ["rescore", finished_run.parent, "--top", "1", "--seeds", "1"]):
            r = _cli(*cmd)
            assert r.returncode == 2, (cmd, r.stdout, r.stderr)
            assert f"being written by pid {holder.pid}" in r.stderr
            assert "Traceback" not in r.stderr
        assert _cli("show", finished_run.parent).returncode == 0
    finally:
        holder.kill()
        holder.wait()
    with RunStore.open(finished_run, readonly=True) as s:
        # the refused resume wrote nothing
        assert s.count() == 6 and s.get_meta("candidates") is None


# ------------------------------------------------------------------------------ flags

RUN = "{run}"
BAD_FLAGS = [
    ["evaluate", "--program", "dqn", "--env", "CartPole-v0", "--seeds", "0"],
    ["evaluate", "--program", "dqn", "--env", "CartPole-v0", "--seeds", "-2"],
    ["evaluate", "--program", "dqn", "--env", "CartPole-v0", "--seeds", "two"],
    ["evaluate", "--program", "dqn", "--env", "CartPole-v0", "--seed", "-1"],
    ["evaluate", "--program", "dqn", "--env", "CartPole-v0", "--hurdle-threshold", "1.5"],
    ["evaluate", "--program", "dqn", "--env", "CartPole-v0", "--hurdle-threshold", "nan"],
    ["evaluate", "--program", "dqn", "--env", "Bogus-v9"],
    ["evaluate", "--program", "no_such_loss", "--env", "CartPole-v0"],
    ["evaluate", "--program", "dqn", "--env", "CartPole-v0", "--preset", "huge"],
    ["evolve", "--candidates", "-5", "--out", "{tmp}/a"],
    ["evolve", "--candidates", "0", "--out", "{tmp}/a"],
    ["evolve", "--candidates", "1e3", "--out", "{tmp}/a"],
    ["evolve", "--workers", "-1", "--out", "{tmp}/a"],
    ["evolve", "--workers", "0", "--out", "{tmp}/a"],
    ["evolve", "--timeout", "-1", "--out", "{tmp}/a"],
    ["evolve", "--timeout", "0", "--out", "{tmp}/a"],
    ["evolve", "--timeout", "inf", "--out", "{tmp}/a"],
    ["evolve", "--population", "0", "--out", "{tmp}/a"],
    ["evolve", "--tournament", "-3", "--out", "{tmp}/a"],
    ["evolve", "--batch", "0", "--out", "{tmp}/a"],
    ["evolve", "--max-steps", "0", "--out", "{tmp}/a"],
    ["evolve", "--seed", "-4", "--out", "{tmp}/a"],
    ["evolve", "--preset", "nope", "--out", "{tmp}/a"],
    ["evolve", "--trainer", "nope", "--out", "{tmp}/a"],
    ["evolve", "--space", "nope", "--out", "{tmp}/a"],
    ["evolve", "--hurdle", "CartPole-v0:2", "--out", "{tmp}/a"],
    ["evolve", "--hurdle", "CartPole-v0", "--out", "{tmp}/a"],
    ["evolve", "--preset", "ci", "--envs", "Nope-v0", "--out", "{tmp}/a"],
    ["evolve", "--preset", "ci", "--out", "{tmp}/afile/run"],
    ["evolve", "--preset", "ci", "--out", RUN],
    ["evolve", "--backend", "gpu", "--out", "{tmp}/a"],
    ["resume", RUN, "--candidates", "-3"],
    ["resume", RUN, "--workers", "0"],
    ["resume", "{tmp}/no_such_run"],
    ["resume", "{tmp}/afile"],
    ["show", RUN, "--top", "-1"],
    ["show", RUN, "--top", "0"],
    ["show", "{tmp}/no_such_run"],
    ["rescore", RUN, "--top", "0"],
    ["rescore", RUN, "--seeds", "-1"],
    ["reproduce", "training", "--seeds", "0"],
    ["reproduce", "training", "--workers", "0"],
    ["reproduce", "no_such_experiment"],
    ["reproduce", "training", "--budget", "huge"],
    ["export", "dqn", "--rank", "-1"],
    ["export", "dqn", "--format", "onnx"],
    ["program", "{tmp}/afile"],
    ["program", "{tmp}/no_such.json"],
    ["frobnicate"],
    [],
]


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=[" ".join(a)[:60] for a in BAD_FLAGS])
def test_bad_flags_exit_2_with_a_message_and_no_traceback(argv, finished_run, tmp_path, capsys):
    from evorl_nb.cli import main

    (tmp_path / "afile").write_text("not a folder\n")
    argv = [a.format(tmp=tmp_path, run=finished_run.parent) for a in argv]
    before = load_run(finished_run).candidates
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err, err
    assert not (tmp_path / "a").exists()  # refused before anything was created
    after = load_run(finished_run).candidates
    assert len(after) == len(before) and RunStore.open(finished_run).close() is None


def test_unreachable_ray_address_fails_within_the_stated_timeout(tmp_path):
    pytest.importorskip("ray")
    from evorl_nb.backends import RAY_CONNECT_TIMEOUT

    t = time.time()
    r = _cli("evolve", "--preset", "ci", "--out", tmp_path / "r", "--backend", "ray",
             "--address", "127.0.0.1:1", timeout=120)
    assert r.returncode == 2, r.stderr
    assert "no Ray cluster answers at 127.0.0.1:1" in r.stderr and "Traceback" not in r.stderr
    assert time.time() - t < RAY_CONNECT_TIMEOUT + 60  # process start and imports included


# ---------------------------------------------------------------------- program files


def _valid() -> dict:
    import json

    return json.loads(library.get("dqn_reg").to_json())


def _edit(fn):
    d = _valid()
    fn(d)
    return d


def _const(value):
    """dqn_reg with 0.1*Q rebuilt as Constant(value)*Q."""
    def put(d):
        d["nodes"][8:] = [{"op": "Constant", "value": value},          # index 15
                          {"op": "DotProduct", "inputs": [15, 8]},     # 16
                          {"op": "Add", "inputs": [14, 16]}]           # the output
    return _edit(put)


def _chain(n: int) -> dict:
    """A valid program of ``n`` nodes: Q(s_t, a_t) negated over and over."""
    nodes = [{"op": "QValues", "inputs": [0, 2]}, {"op": "SelectList", "inputs": [7, 1]}]
    nodes += [{"op": "Abs", "inputs": [k + 8]} for k in range(n - 2)]
    return {"format": "evorl_nb.program", "version": 1, "nodes": nodes}


def _text(obj) -> str:
    import json
    return obj if isinstance(obj, str) else json.dumps(obj)


BAD_PROGRAMS = {
    "empty": "",
    "whitespace": "   \n",
    "not json": "loss = delta**2",
    "truncated": _text(_valid())[:-20],
    "trailing comma": _text(_valid())[:-1] + ",}",
    "list at top": "[1, 2, 3]",
    "string at top": '"dqn"',
    "number at top": "42",
    "null": "null",
    "nested 100k deep": "[" * 100_000 + "]" * 100_000,
    "objects nested 50k deep": '{"a":' * 50_000 + "1" + "}" * 50_000,
    "too long": " " * 1_000_001 + "{}",
    "wrong format": _edit(lambda d: d.update(format="evorl_nb.run")),
    "no version": _edit(lambda d: d.pop("version")),
    "version string": _edit(lambda d: d.update(version="1")),
    "version bool": _edit(lambda d: d.update(version=True)),
    "version 0": _edit(lambda d: d.update(version=0)),
    "version from the future": _edit(lambda d: d.update(version=99)),
    "inputs renamed": _edit(lambda d: d.update(inputs=["q", "a", "s", "qt", "s2", "r", "g"])),
    "unknown field": _edit(lambda d: d.update(extra=1)),
    "no nodes": _edit(lambda d: d.pop("nodes")),
    "nodes an object": _edit(lambda d: d.update(nodes={"0": {}})),
    "nodes empty": _edit(lambda d: d.update(nodes=[])),
    "node a list": _edit(lambda d: d["nodes"].__setitem__(0, [0, 2])),
    "node a string": _edit(lambda d: d["nodes"].__setitem__(0, "QValues")),
    "node unknown field": _edit(lambda d: d["nodes"][0].update(weight=1)),
    "unknown op": _edit(lambda d: d["nodes"][3].update(op="Softplus")),
    "op lowercase": _edit(lambda d: d["nodes"][3].update(op="maxlist")),
    "op missing": _edit(lambda d: d["nodes"][3].pop("op")),
    "op a number": _edit(lambda d: d["nodes"][3].update(op=3)),
    "inputs a string": _edit(lambda d: d["nodes"][1].update(inputs="7,1")),
    "input a float": _edit(lambda d: d["nodes"][1].update(inputs=[7.0, 1])),
    "input a bool": _edit(lambda d: d["nodes"][1].update(inputs=[True, 1])),
    "input a string": _edit(lambda d: d["nodes"][1].update(inputs=["7", 1])),
    "input negative": _edit(lambda d: d["nodes"][1].update(inputs=[-1, 1])),
    "input itself": _edit(lambda d: d["nodes"][1].update(inputs=[8, 1])),
    "input later (cycle)": _edit(lambda d: d["nodes"][1].update(inputs=[12, 1])),
    "input huge": _edit(lambda d: d["nodes"][1].update(inputs=[10**400, 1])),
    "too few inputs": _edit(lambda d: d["nodes"][1].update(inputs=[7])),
    "too many inputs": _edit(lambda d: d["nodes"][1].update(inputs=[7, 1, 1])),
    "inputs missing": _edit(lambda d: d["nodes"][1].pop("inputs")),
    "type error": _edit(lambda d: d["nodes"][1].update(inputs=[7, 7])),
    "list output": _edit(lambda d: d["nodes"].append({"op": "QValues", "inputs": [0, 2]})),
    "no gradient": _edit(lambda d: d.update(nodes=d["nodes"][2:4] and [
        {"op": "QValues", "inputs": [3, 4]}, {"op": "MaxList", "inputs": [7]}])),
    "value on a non-constant": _edit(lambda d: d["nodes"][3].update(value=1.0)),
    "frozen negative": _edit(lambda d: d.update(frozen=-1)),
    "frozen past the end": _edit(lambda d: d.update(frozen=99)),
    "frozen a string": _edit(lambda d: d.update(frozen="2")),
    "name a number": _edit(lambda d: d.update(name=7)),
    "constant 400 digits": _const(10**400),
    "constant NaN": _const(float("nan")),
    "constant inf": _const(float("inf")),
    "constant -inf": _const(float("-inf")),
    "constant 1e300": _const(1e300),
    "constant -1e31": _const(-1e31),
    "constant a string": _const("0.1"),
    "constant a bool": _const(True),
    "constant null": _const(None),
    "constant a list": _const([0.1]),
    "constant an object": _const({"v": 0.1}),
    "chain of 340k nodes": _chain(340_000),
    "1,001 nodes": _chain(1_001),
}


def _write(folder: Path, name: str, content) -> Path:
    path = folder / (name.replace(" ", "_").replace(",", "") + ".json")
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(_text(content))
    return path


def test_the_corpus_is_valid_where_it_should_be():
    """The corpus's helpers build programs that load, so each bad file is bad for its stated
    reason, not for a broken helper."""
    from evorl_nb.program import Program

    assert Program.from_dict(_const(0.1)).equation() == "δ^2 + 0.1*Q(s_t, a_t)"
    assert len(Program.from_dict(_chain(1_000)).nodes) == 1_000
    assert len(BAD_PROGRAMS) >= 60


@pytest.mark.parametrize("name", sorted(BAD_PROGRAMS))
def test_bad_program_files_get_a_named_error_and_exit_2(name, tmp_path, capsys):
    from evorl_nb.cli import main

    path = _write(tmp_path, name, BAD_PROGRAMS[name])
    t = time.time()
    assert main(["program", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err, err
    assert time.time() - t < 10, "a bad file must be refused quickly"


@pytest.mark.parametrize("content", [b"\xff\xfe{\x00}\x00", b'{"nodes": "\xe9"}', b"\x00" * 64],
                         ids=["utf-16", "latin-1", "zeros"])
def test_binary_program_files_name_the_file(content, tmp_path):
    path = tmp_path / "odd.json"
    path.write_bytes(content)
    r = _cli("program", path)
    assert r.returncode == 2 and str(path) in r.stderr and "Traceback" not in r.stderr, r.stderr


# ----------------------------------------------------------------------------- run stores


def _sql(*statements):
    def damage(path: Path):
        import sqlite3
        with sqlite3.connect(path) as conn:
            for s in statements:
                conn.execute(s)
        conn.close()
    return damage


def _bytes(fn):
    def damage(path: Path):
        data = bytearray(path.read_bytes())
        path.write_bytes(bytes(fn(data)))
    return damage


def _smash_page(data: bytearray, page: int = 3) -> bytearray:
    """Overwrite one interior page with noise (as a disk or copy error would)."""
    size = int.from_bytes(data[16:18], "big") or 65536
    start = size * (page - 1)
    data[start:start + size] = bytes((i * 37 + 11) % 256 for i in range(size))
    return data


_BEST = "(SELECT id FROM candidates ORDER BY fitness DESC, id LIMIT 1)"
BAD_STORES = {
    "empty file": _bytes(lambda d: b""),
    "text file": _bytes(lambda d: b"id,fitness\n1,0.5\n" * 100),
    "random bytes": _bytes(lambda d: bytes((i * 131 + 7) % 256 for i in range(8192))),
    "truncated to half": _bytes(lambda d: d[:len(d) // 2]),
    "header only": _bytes(lambda d: d[:100]),
    "page smashed": _bytes(_smash_page),
    "no meta table": _sql("DROP TABLE meta"),
    "no candidates table": _sql("DROP TABLE candidates"),
    "column dropped": _sql("ALTER TABLE candidates DROP COLUMN mutation"),
    "rescores column dropped": _sql("CREATE TABLE rescores (entry TEXT, env TEXT)"),
    "format wrong": _sql("UPDATE meta SET value = '\"other.run\"' WHERE key = 'format'"),
    "format unquoted": _sql("UPDATE meta SET value = 'evorl_nb.run' WHERE key = 'format'"),
    "version from the future": _sql("UPDATE meta SET value = '99' WHERE key = 'format_version'"),
    "version text": _sql("UPDATE meta SET value = '\"one\"' WHERE key = 'format_version'"),
    "config not JSON": _sql("UPDATE meta SET value = '{envs: [}' WHERE key = 'config'"),
    "config a list": _sql("UPDATE meta SET value = '[1, 2]' WHERE key = 'config'"),
    "config bad field": _sql("UPDATE meta SET value = '{\"population\": \"many\"}' "
                             "WHERE key = 'config'"),
    "seed not a number": _sql("UPDATE meta SET value = '\"zero\"' WHERE key = 'seed'"),
    "seed not JSON": _sql("UPDATE meta SET value = 'zero' WHERE key = 'seed'"),
    "created_at missing": _sql("DELETE FROM meta WHERE key = 'created_at'"),
    "scores not JSON": _sql("UPDATE candidates SET scores = '{oops' WHERE id = 3"),
    "scores a list": _sql("UPDATE candidates SET scores = '[1]' WHERE id = 3"),
    "status unknown": _sql("UPDATE candidates SET status = 'great' WHERE id = 2"),
    "program not JSON": _sql(f"UPDATE candidates SET program = 'Q + 1' WHERE id = {_BEST}"),
    "program invalid": _sql("UPDATE candidates SET program = '{\"nodes\": []}' "
                            f"WHERE id = {_BEST}"),
    "proposal renamed": _sql("UPDATE candidates SET proposal = 'c3' WHERE id = 3"),
    "fitness text": _sql("UPDATE candidates SET fitness = 'high' WHERE id = 5"),
    "steps text": _sql("UPDATE candidates SET steps = 'many' WHERE id = 5"),
}


REFUSED_BY = {"proposal renamed": ("resume",), "config bad field": ("resume", "rescore")}
"""Damage only some commands meet (the proposal counter, the search config): those refuse it;
every other damage is refused by show, resume, rescore and export alike."""
LOADABLE = {"proposal renamed", "config bad field", "program invalid", "program not JSON"}
"""Damage inside values load_run does not interpret: it still loads the table."""


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A fresh copy of a finished run, folder and all, to damage."""
    import shutil

    def make(name: str) -> Path:
        folder = tmp_path / name.replace(" ", "_")
        shutil.copytree(finished_run.parent, folder,
                        ignore=shutil.ignore_patterns("*.lock", "*-wal", "*-shm"))
        return folder
    return make


@pytest.mark.parametrize("name", sorted(BAD_STORES))
def test_damaged_run_stores_are_refused_by_show_and_resume_with_a_named_error(name, run_copy,
                                                                              capsys):
    from evorl_nb.cli import main

    folder = run_copy(name)
    BAD_STORES[name](folder / "run.sqlite")
    before = (folder / "run.sqlite").read_bytes()
    for argv in (["show", str(folder)], ["resume", str(folder), "--backend", "inprocess"],
                 ["rescore", str(folder), "--backend", "inprocess", "--seeds", "1"],
                 ["export", str(folder)]):
        if argv[0] not in REFUSED_BY.get(name, argv[0]):
            continue  # the damage is in what this command does not use
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "error" in err and "Traceback" not in err, (argv, err)
        assert str(folder) in err or "candidate" in err, (argv, err)
    assert (folder / "run.sqlite").read_bytes() == before  # refused, so nothing was written
    if name in LOADABLE:
        assert len(load_run(folder / "run.sqlite").candidates) == 6  # readers still read
        return
    with pytest.raises(Exception) as info:
        load_run(folder / "run.sqlite")
    from evorl_nb.program import ProgramError
    from evorl_nb.store import StoreError
    assert isinstance(info.value, (StoreError, ProgramError, ValueError)), info.value


FULL_DISK_SCRIPT = """
import resource, signal, sys
sys.path.insert(0, {tests!r})
from fakes import FakeEvaluator
from evorl_nb.evolve import get_preset
from evorl_nb.runner import start
from evorl_nb.store import StoreError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
cfg = get_preset("ci", population=8, tournament=3, candidates={n}, envs=("CartPole-v0",),
                 hurdle=None, trainer="ci", width=1)
try:
    start({out!r}, cfg, seed=3, evaluator=FakeEvaluator(), progress=False, verbose=False)
except StoreError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
"""


def test_a_full_disk_stops_the_search_with_a_named_error_and_resume_finishes_it(tmp_path):
    """The OS refuses the store's writes part-way (a file-size limit: the same failed
    write(2) a full disk gives): the driver stops with "cannot write run", exit 2, keeps
    every candidate committed before, and `resume` with room again finishes the budget with
    no gap and no double."""
    from evorl_nb.runner import resume

    out, n = tmp_path / "run", 120
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT.format(
        tests=str(TESTS), out=str(out), n=n, limit=150_000)], capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "cannot write run" in proc.stderr and "Traceback" not in proc.stderr
    kept = load_run(out).candidates
    assert 0 < len(kept) < n and list(kept.id) == list(range(1, len(kept) + 1))
    resume(out, evaluator=FakeEvaluator(), progress=False, verbose=False)
    df = load_run(out).candidates
    assert len(df) == n and df.proposal.is_unique and list(df.id) == list(range(1, n + 1))
    assert df.iloc[:len(kept)].equals(kept)  # what was kept is unchanged
