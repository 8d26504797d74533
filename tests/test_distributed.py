"""The benchmark under torch.distributed: CPU ranks with gloo, launched by torchrun.

The oracle is a single-process run of the same command: with one image per batch both do
the same arithmetic for every image, so a distributed run must reproduce its per-image
records bit for bit (only the measured ``time_s`` differs).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner
from test_bench import Counting, fake_dataset

from conftest import MODEL_FACTORIES
from xvit import ParameterError
from xvit.bench import run_benchmark
from xvit.bench._distributed import shard, wants_distributed
from xvit.bench._store import load_results, result_files
from xvit.cli import main

N = 8
METHODS = ["gradmask", "attention", "random"]  # random: a randomised method (per-image seeds)
ARGS = [
    "--model",
    "xvit:digits-vit",
    "--data",
    "digits",
    "--methods",
    ",".join(METHODS),
    "-p",
    "gradmask.masks_per_layer=1",
    "--metrics",
    "insertion,pointing_game",  # a curve metric (for the plot) and a box metric
    "--images-per-call",
    "1",
]
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed gloo"
)


def _env() -> dict[str, str]:
    """This environment without a launcher's variables; one thread per process, as torchrun
    sets it, so that the ranks do the oracle's arithmetic (it runs on one thread too)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "--tee=3",  # prefix every line with its rank: [default0]:, [default1]:
        *args,
    ]


def _bench(out: Path, nproc: int) -> list[str]:
    return _torchrun(nproc, "-m", "xvit", "bench", *ARGS, "-n", str(N), "--out", str(out))


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _records(path: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[(r["id"], r["method"])] = r
    return out


def _without_time(records: dict[tuple[str, str], dict]) -> dict[tuple[str, str], dict]:
    return {k: {f: v for f, v in r.items() if f != "time_s"} for k, r in records.items()}


def _shares(stderr: str) -> dict[int, tuple[int, int]]:
    """rank -> (images it did, images to do), from each rank's start-up line."""
    found = re.findall(r"rank (\d+) of \d+ \(cpu\): (\d+) of (\d+) images to do", stderr)
    return {int(r): (int(k), int(t)) for r, k, t in found}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """A single-process run without any launcher environment: the same command, in this
    process (a process of its own would spend most of its time importing), on one thread as
    every rank runs."""
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as env:
        for name in LAUNCH_ENV:
            env.delenv(name, raising=False)
        torch.set_num_threads(1)
        try:
            result = CliRunner().invoke(main, ["bench", *ARGS, "-n", str(N), "--out", str(out)])
        finally:
            torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output[-3000:]
    assert sorted(p.name for p in result_files(out)) == ["results.jsonl"]
    records = _records(out / "results.jsonl")
    assert len(records) == N * len(METHODS)
    return records


@needs_gloo
@pytest.mark.slow
def test_two_ranks_equal_a_single_process_run(oracle, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run(_bench(out, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank did half the images: 0, 2, 4, 6 and 1, 3, 5, 7
    assert _shares(proc.stderr) == {0: (N // 2, N), 1: (N // 2, N)}
    # rank 0 gathered every rank's file into results.jsonl, as a single run writes it
    assert sorted(p.name for p in result_files(out)) == ["results.jsonl"]
    got = _records(out / "results.jsonl")
    assert _without_time(got) == _without_time(oracle)
    # and wrote the summary files from them (the table only once, by rank 0)
    summary = json.loads((out / "summary.json").read_text())
    for method in METHODS:
        m = summary["methods"][method]
        assert m["images"] == N
        for metric, est in m["metrics"].items():
            scores = [r["scores"][metric] for r in oracle.values() if r["method"] == method]
            defined = [s for s in scores if s is not None]
            assert est["mean"] == pytest.approx(sum(defined) / len(defined), rel=1e-12)
    # the table (and the normalised one under it, when it has one) is printed by rank 0 only
    rows = [line for line in proc.stdout.splitlines() if "| gradmask |" in line]
    assert rows and all(line.startswith("[default0]:") for line in rows)
    assert proc.stdout.count("| method | n |") == 1
    for name in ("table.md", "summary.csv", "run.json", "curves.png"):
        assert (out / name).exists()
    assert not list(out.glob("failed.rank*.json"))


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@needs_gloo
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_resume_after_killing_a_rank_recomputes_nothing(oracle, tmp_path: Path) -> None:
    out = tmp_path / "out"
    launcher = subprocess.Popen(
        _bench(out, 2), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while _complete_lines(out / "results.rank1.jsonl") < 2:  # rank 1 is mid-way
            assert launcher.poll() is None, "the run ended before rank 1 could be killed"
            assert time.monotonic() < deadline, "rank 1 wrote no results in time"
            time.sleep(0.05)
        pid = _rank_pid(launcher.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode != 0, output[-3000:]
    # nothing written was lost: the rank files keep every finished record
    before = load_results(out)
    assert 2 <= len(before) < N * len(METHODS)
    complete = {i for i, _ in before if all((i, m) in before for m in METHODS)}
    unfinished = {i for i, _ in oracle} - complete

    # resume with another number of ranks: only the unfinished images are done again
    proc = _run(_bench(out, 3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    shares = _shares(proc.stderr)
    assert sorted(shares) == [0, 1, 2]
    assert {t for _, t in shares.values()} == {len(unfinished)}
    assert sum(k for k, _ in shares.values()) == len(unfinished)
    after = _records(out / "results.jsonl")
    assert sorted(p.name for p in result_files(out)) == ["results.jsonl"]
    assert _without_time(after) == _without_time(oracle)
    # a finished record was not computed again: its measured time is the one of the first run
    for key, record in before.items():
        assert after[key]["time_s"] == record["time_s"], key


FAILING = """
    import sys

    import torch

    import xvit
    from xvit.bench import run_benchmark
    from xvit.data import get_dataset

    model = xvit.load_model("xvit:digits-vit")
    data = get_dataset("digits")
    bad = xvit.get_adapter(model).preprocessing(data[3].image)


    class Boom(xvit.Explainer):
        name = "boom"
        family = "test"

        def compute(self, adapter, inputs, target):
            if any(torch.equal(x, bad) for x in inputs):
                raise RuntimeError("boom")
            return inputs[:, 0, ::8, ::8].clone()


    run_benchmark(model, data, methods=[Boom()], metrics="pointing_game", n=6,
                  images_per_call=1, out_dir=sys.argv[1], progress=False)
"""


@needs_gloo
@pytest.mark.slow
def test_a_failing_rank_fails_the_job_naming_rank_and_image(tmp_path: Path) -> None:
    script = tmp_path / "failing.py"
    script.write_text(textwrap.dedent(FAILING))
    out = tmp_path / "out"
    proc = _run(_torchrun(2, str(script), str(out)))
    assert proc.returncode != 0
    # image 3 is rank 1's second image (rank 1 takes 1, 3, 5); both ranks report it
    message = "rank 1 of 2 failed on image(s) 'digits-test-0-3' with method 'boom'"
    for rank in (0, 1):
        line = [s for s in proc.stderr.splitlines() if message in s and f"[default{rank}]" in s]
        assert line and "RuntimeError: boom" in line[0] and "RankFailedError" in line[0]
    # what was finished before the failure is on disk (rank 1's first image included)
    done = load_results(out)
    assert ("digits-test-0-1", "boom") in done
    assert ("digits-test-0-3", "boom") not in done
    marker = json.loads((out / "failed.rank1.json").read_text())
    assert marker["images"] == ["digits-test-0-3"] and marker["rank"] == 1


# ---- in-process pieces (no launcher) ------------------------------------------------------


def test_shards_are_disjoint_complete_and_deterministic() -> None:
    items = [f"img{i}" for i in range(11)]
    for world in (1, 2, 3, 8, 16):
        parts = [shard(items, r, world) for r in range(world)]
        assert sorted(i for p in parts for i in p) == sorted(items)
        assert sum(len(p) for p in parts) == len(items)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert parts == [shard(items, r, world) for r in range(world)]
    assert shard(items, 1, 3) == ["img1", "img4", "img7", "img10"]


def test_launcher_environment_decides(monkeypatch) -> None:
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    assert not wants_distributed(None)
    with pytest.raises(ParameterError, match="torchrun --nproc_per_node"):
        wants_distributed(True)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not wants_distributed(None)  # torchrun with one process: a plain run
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert wants_distributed(None) and not wants_distributed(False)
    model = MODEL_FACTORIES["timm-vit"]()
    with pytest.raises(ParameterError, match="needs out_dir"):
        run_benchmark(model, fake_dataset(2), methods="random", n=2, progress=False)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ParameterError, match="WORLD_SIZE='two' is not an integer"):
        wants_distributed(None)


def test_a_single_process_resumes_from_rank_files(tmp_path: Path) -> None:
    """A distributed run killed on 2 ranks, resumed without torchrun (2 ranks -> 1)."""
    model = MODEL_FACTORIES["timm-vit"]()
    data = fake_dataset(6)
    kw = dict(
        metrics=["pointing_game", "energy_pointing_game"], images_per_call=2, out_dir=tmp_path
    )
    first = Counting()
    run_benchmark(model, data, methods=[first], n=4, progress=False, **kw)
    lines = (tmp_path / "results.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "results.jsonl").unlink()
    # what two ranks would have left: 0 and 2 on rank 0; 1 and 3 on rank 1, its last line cut
    (tmp_path / "results.rank0.jsonl").write_text(lines[0] + lines[2])
    (tmp_path / "results.rank1.jsonl").write_text(lines[1] + lines[3][:25])
    before = {json.loads(s)["id"]: json.loads(s) for s in lines}
    again = Counting()
    with pytest.warns(UserWarning, match="unfinished last line"):
        res = run_benchmark(model, data, methods=[again], n=6, progress=False, **kw)
    assert again.images == 3  # images 3 (cut short), 4 and 5
    assert sorted(p.name for p in result_files(tmp_path)) == ["results.jsonl"]
    after = {r["id"]: r for r in map(json.loads, (tmp_path / "results.jsonl").open())}
    assert sorted(after) == [s.id for s in data]
    for i in ("img-000", "img-001", "img-002"):
        assert after[i] == before[i]
    assert [r["id"] for r in res.records] == [s.id for s in data]


def test_records_of_one_pair_merge_across_files(tmp_path: Path) -> None:
    def write(name: str, *records: dict) -> None:
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))

    base = {"id": "a", "method": "m", "curves": {}}
    write("results.jsonl", {**base, "scores": {"x": 1.0, "y": 5.0}, "time_s": 1})
    write("results.rank1.jsonl", {**base, "scores": {"y": 2.0}, "time_s": 3})
    write("results.rank0.jsonl", {**base, "scores": {"z": None}, "time_s": 2})
    write("results.rank1-20250101T000000.jsonl", {**base, "scores": {"x": 9.0}})  # moved aside
    write("results.rank1.jsonl.bak", {**base, "scores": {"x": 9.0}})
    names = [p.name for p in result_files(tmp_path)]
    assert names == ["results.jsonl", "results.rank0.jsonl", "results.rank1.jsonl"]
    merged = load_results(tmp_path)[("a", "m")]
    assert merged["scores"] == {"x": 1.0, "y": 2.0, "z": None}  # later files win per metric
    assert merged["time_s"] == 3


def test_no_resume_moves_every_rank_file_aside(tmp_path: Path) -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    data = fake_dataset(2)
    run_benchmark(
        model,
        data,
        methods=[Counting()],
        metrics="pointing_game",
        n=2,
        out_dir=tmp_path,
        progress=False,
    )
    (tmp_path / "results.jsonl").rename(tmp_path / "results.rank3.jsonl")
    fresh = Counting()
    run_benchmark(
        model,
        data,
        methods=[fresh],
        metrics="pointing_game",
        n=2,
        out_dir=tmp_path,
        resume=False,
        progress=False,
    )
    assert fresh.images == 2
    assert len(list(tmp_path.glob("results.rank3-*.jsonl"))) == 1
    assert [p.name for p in result_files(tmp_path)] == ["results.jsonl"]
