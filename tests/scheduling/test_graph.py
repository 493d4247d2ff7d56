"""The experiment's job graph, its locks and the local launcher, with hand-computed expectations."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE
from neonet_toolkit.scheduling.graph import Graph, Job, build_graph, is_done
from neonet_toolkit.scheduling.launchers import (
    LaunchError,
    check_gpu_memory,
    check_gpus,
    check_slurm,
    experiment_status,
    run_local,
    slurm_resources,
)
from neonet_toolkit.scheduling.locks import JobLock
from neonet_toolkit.scheduling.worker import lock_file, read_status
from neonet_toolkit.utilities.identifiers import FINAL_CHECKPOINT, ResultLayout
from neonet_toolkit.utilities.io import load_json


def _deps(g: Graph, name: str) -> set[str]:
    return set(g.jobs[name].deps)


def test_graph_dependencies(phantom_env):
    g = build_graph(501, ["pattennet", "resnet18"], [0.0, 1.0], folds=[0, 1], configuration="cpu_small")
    assert _deps(g, "masks/1") == {"seg/1"}
    assert _deps(g, "ldm/0") == {"vae/0"}
    assert _deps(g, "controlnet/1") == {"ldm/1"}
    assert _deps(g, "generate/0") == {"controlnet/0"}          # gt crops: no masks needed
    assert _deps(g, "quality/0") == {"generate/0"}
    assert _deps(g, "cls/cls_pattennet_1_esnested/0") == {"vae/0", "quality/0"}
    assert _deps(g, "cls/cls_pattennet_0_esnested/1") == {"vae/1"}   # real only: no synthetic set
    assert _deps(g, "cls/cls_resnet18_0_esnested/0") == set()         # no frozen VAE, no synthetic set
    assert _deps(g, "cls/cls_resnet18_1_esnested/1") == {"quality/1"}
    assert _deps(g, "evaluate") == {j for j in g.jobs if j.startswith("cls/")}
    assert len([j for j in g.jobs if j.startswith("cls/")]) == 2 * 2 * 2
    order = [j.name for j in g.topological()]
    assert all(order.index(d) < order.index(n) for n in order for d in g.jobs[n].deps)
    # pred crops: a fold's generator and classifiers wait for every fold's out-of-fold masks
    gp = build_graph(501, ["pattennet"], [1.0], folds=[0, 1], crop_source="pred", configuration="cpu_small")
    assert _deps(gp, "generate/0") == {"controlnet/0", "masks/0", "masks/1"}
    assert _deps(gp, "cls/cls_pattennet_1_pred_esnested/1") == {"vae/1", "quality/1", "masks/0", "masks/1"}
    assert "--crop-source" in gp.jobs["generate/1"].argv and "pred" in gp.jobs["generate/1"].argv
    # no NeoSeg, an autoencoder choice
    gq = build_graph(501, ["resnet18"], [1.0], folds=[0], seg=False, autoencoder="vqvae", configuration="cpu_small")
    assert not any(j.startswith(("seg/", "masks/")) for j in gq.jobs)
    assert _deps(gq, "ldm/0") == {"vqvae/0"} and "vae/0" not in gq.jobs
    argv = gq.jobs["ldm/0"].argv
    assert argv[argv.index("--autoencoder") + 1] == "vqvae"


def test_graph_estimates_and_finished_jobs(phantom_env):
    g = build_graph(501, ["pattennet"], [1.0], folds=[0], configuration="cpu_small", epochs=3)
    pp = Path(phantom_env["preprocessed"])
    plans = load_json(pp / NEONET_PLANS_FILE)
    n_train = len(load_json(pp / "splits_final.json")[0]["train"])
    row = plans["resource_estimates"]["configurations"]["cpu_small"]["vae"]
    batch = plans["configurations"]["cpu_small"]["vae"]["batch_size"]
    vae = g.jobs["vae/0"]
    assert vae.hours == pytest.approx(3 * math.ceil(n_train / batch) * row["seconds_per_step"] / 3600)
    assert vae.gpu_gb == pytest.approx(row["peak_gb"])
    assert g.jobs["quality/0"].gpu_gb is None and g.jobs["evaluate"].gpu_gb is None  # CPU jobs
    # a fold whose checkpoint_final.pth exists is finished: the graph holds it, pending() does not
    assert "vae/0" in [j.name for j in g.pending()]
    out = Path(vae.done["path"])
    out.mkdir(parents=True)
    (out / FINAL_CHECKPOINT).write_bytes(b"x")
    try:
        assert is_done(vae.done)
        assert "vae/0" not in [j.name for j in g.pending()]
        assert "| vae/0 | 0 | — |" in g.table() and "finished" in g.table().split("| vae/0 |")[1].split("\n")[0]
    finally:
        (out / FINAL_CHECKPOINT).unlink()


def test_classifier_jobs_costed_by_architecture(phantom_env):
    from neonet_toolkit.experiment_planning.plans import NeoNetPlans
    from neonet_toolkit.training.resources import estimate_classifiers

    pp = Path(phantom_env["preprocessed"])
    ests = estimate_classifiers(501, "cpu_small", ["pattennet", "resnet18"])
    assert ests["resnet18"]["seconds_per_step"] > 1.1 * ests["pattennet"]["seconds_per_step"]
    g = build_graph(501, ["pattennet", "resnet18"], [0.0], folds=[0], configuration="cpu_small", epochs=2,
                    cls_estimates=ests)
    conf = NeoNetPlans(pp / NEONET_PLANS_FILE).configuration("cpu_small")["cls"]
    n_train = len(load_json(pp / "splits_final.json")[0]["train"])
    k = conf["inner_folds"]
    steps = 2 * math.ceil(n_train / conf["batch_size"]) * (1 + (k - 1))  # the refit + k inner fits on (k-1)/k
    for arch in ("pattennet", "resnet18"):
        job = g.jobs[f"cls/cls_{arch}_0_esnested/0"]
        assert job.gpu_gb == pytest.approx(ests[arch]["peak_gb"])
        assert job.hours == pytest.approx(steps * ests[arch]["seconds_per_step"] / 3600)
    # without them every classifier is costed as the plans' one cls row
    g1 = build_graph(501, ["pattennet", "resnet18"], [0.0], folds=[0], configuration="cpu_small", epochs=2)
    assert g1.jobs["cls/cls_resnet18_0_esnested/0"].hours == g1.jobs["cls/cls_pattennet_0_esnested/0"].hours


def _job(name, hours, deps=(), gpu=1.0):
    return Job(name, "x", None, ["python", "-c", "pass"], list(deps), {}, gpu, hours)


def test_wall_time_list_scheduling_by_hand():
    # A(2 h) -> B(1 h); C(3 h) -> D(1 h, a CPU job: holds no GPU)
    g = Graph("d", {j.name: j for j in [_job("A", 2), _job("B", 1, ["A"]), _job("C", 3), _job("D", 1, ["C"], None)]},
              "c", [0])
    # one GPU, longest remaining path first: C 0-3 (tail 4), A 3-5, B 5-6; D runs on the CPU 3-4
    assert g.wall_hours(1) == pytest.approx(6.0)
    # two GPUs: C 0-3 | A 0-2, B 2-3; D 3-4
    assert g.wall_hours(2) == pytest.approx(4.0)


def test_pending_skips_unfinished_ancestors_of_finished_jobs(tmp_path):
    """A -> B -> C and A -> D: with C finished, B is not needed; D (unfinished, ends the graph) still needs A."""
    done = tmp_path / "done.txt"
    done.write_text("x")
    fin = {"kind": "newer", "path": str(done), "than": []}

    def job(name, deps=(), finished=False):
        j = _job(name, 1.0, deps)
        j.done = fin if finished else {"kind": "newer", "path": str(tmp_path / f"{name}.missing"), "than": []}
        return j

    def graph(*jobs):
        return Graph("d", {j.name: j for j in jobs}, "c", [0])

    g = graph(job("A"), job("B", ["A"]), job("C", ["B"], finished=True), job("D", ["A"]))
    assert [j.name for j in g.pending()] == ["A", "D"]
    g = graph(job("A"), job("B", ["A"]), job("C", ["B"], finished=True))
    assert g.pending() == []                        # everything downstream is finished: nothing to train
    g = graph(job("A", finished=True), job("B", ["A"]), job("C", ["B"]))
    assert [j.name for j in g.pending()] == ["B", "C"]


def test_wall_time_values():
    jobs = [_job("A", 2), _job("B", 1, ["A"]), _job("C", 3)]
    g = Graph("d", {j.name: j for j in jobs}, "c", [0])
    assert g.wall_hours(1) == pytest.approx(6.0)   # everything on one GPU: the sum
    assert g.wall_hours(2) == pytest.approx(3.0)   # C on one GPU, A then B on the other
    assert g.critical_path_hours() == pytest.approx(3.0)
    chain = Graph("d", {j.name: j for j in [_job("A", 2), _job("B", 1, ["A"]), _job("E", 1, ["B"])]}, "c", [0])
    assert chain.wall_hours(4) == pytest.approx(4.0)  # a chain gains nothing from more GPUs
    with pytest.raises(ValueError, match="cycle"):
        Graph("d", {"A": _job("A", 1, ["B"]), "B": _job("B", 1, ["A"])}, "c", [0]).topological()


def test_lock_exclusive_and_stale_rules(tmp_path):
    lock = JobLock(tmp_path / "a.lock", stale_after_s=5)
    assert lock.acquire({"job": "a"})
    other = JobLock(tmp_path / "a.lock", stale_after_s=5)
    assert not other.acquire({"job": "a"})            # a live holder keeps it
    time.sleep(0.8)
    assert time.time() - (tmp_path / "a.lock").stat().st_mtime < 0.8  # the heartbeat (every 0.5 s) touches it
    lock.release()
    assert not (tmp_path / "a.lock").exists()
    # a holder on this host whose process is gone: stale, broken and kept aside
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "b.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    b = JobLock(tmp_path / "b.lock", stale_after_s=600)
    assert "is gone" in b.stale_reason()
    assert b.acquire({"job": "b"})
    assert len(list(tmp_path.glob("b.lock.stale-*"))) == 1
    b.release()
    # a holder on another host (a crashed node): stale only once its heartbeat is older than the limit
    (tmp_path / "c.lock").write_text(json.dumps({"host": "node-that-died", "pid": 1}))
    c = JobLock(tmp_path / "c.lock", stale_after_s=60)
    assert c.stale_reason() is None and not c.acquire({"job": "c"})
    old = time.time() - 120
    os.utime(tmp_path / "c.lock", (old, old))
    assert "no heartbeat" in c.stale_reason()
    assert c.acquire({"job": "c"})
    c.release()


def _py(code: str) -> list[str]:
    return ["python", "-c", code]


def test_local_launcher_slots_failures_and_rerun(tmp_path):
    """Two slots run independent jobs side by side with NEONET_JOBS=2; a failure blocks only its descendants; a
    second launch runs only what is missing."""
    t = tmp_path
    marker = (lambda n: {"kind": "newer", "path": str(t / f"{n}.done"), "than": []})
    sleep_write = ("import os, time, json, sys; s=time.time(); time.sleep(1.5); "
                   "open(sys.argv[1] + '.json', 'w').write(json.dumps({'start': s, 'end': time.time(), "
                   "'jobs': os.environ['NEONET_JOBS']})); open(sys.argv[1] + '.done', 'w').write('ok')")
    jobs = [
        Job("A", "x", 0, _py(sleep_write) + [str(t / "A")], [], marker("A"), 0.0, 1.0),
        Job("B", "x", 1, _py(sleep_write) + [str(t / "B")], [], marker("B"), 0.0, 1.0),
        Job("F", "x", 0, _py("import sys, pathlib; p = pathlib.Path(sys.argv[1]); p.exists() or sys.exit(3); "
                             "pathlib.Path(sys.argv[2]).write_text('ok')") + [str(t / "allow_F"), str(t / "F.done")],
            ["A"], marker("F"), 0.0, 1.0),
        Job("G", "x", 0, _py("open(__import__('sys').argv[1], 'w').write('ok')") + [str(t / "G.done")], ["F"],
            marker("G"), 0.0, 1.0),
        Job("H", "x", 1, _py("open(__import__('sys').argv[1], 'w').write('ok')") + [str(t / "H.done")], ["B"],
            marker("H"), 0.0, 1.0),
    ]
    g = Graph("d", {j.name: j for j in jobs}, "c", [0, 1])
    res = run_local(g, t / "run", slots=2, progress=False)
    assert sorted(res["finished"]) == ["A", "B", "H"]
    assert res["failed"] == ["F"] and res["blocked"] == ["G"]
    a, b = (json.loads((t / f"{n}.json").read_text(encoding="utf-8")) for n in "AB")
    assert a["jobs"] == b["jobs"] == "2"                        # the thread rule saw two concurrent jobs
    assert max(a["start"], b["start"]) < min(a["end"], b["end"])  # they overlapped
    st = read_status(t / "run", "F")
    assert st["state"] == "failed" and st["returncode"] == 3
    rows = {r["job"]: r for r in experiment_status(g, t / "run")}
    assert rows["F"]["state"] == "failed" and rows["G"]["state"] == "not started" and rows["A"]["state"] == "finished"
    assert not lock_file(t / "run", "F").exists()              # released after the failure
    # fix the cause and launch again: only F and G run
    (t / "allow_F").write_text("")
    mtime_a = (t / "A.json").stat().st_mtime
    res2 = run_local(g, t / "run", slots=2, progress=False)
    assert sorted(res2["finished"]) == ["F", "G"] and sorted(res2["skipped"]) == ["A", "B", "H"]
    assert (t / "A.json").stat().st_mtime == mtime_a


def test_multi_gpu_neoseg_jobs(phantom_env, tmp_path, monkeypatch):
    """--seg-gpus 2: nnU-Net's -num_gpus 2, two GPUs from SLURM and from the local pool, two slots in the estimate."""
    from neonet_toolkit.scheduling import launchers

    g1 = build_graph(501, ["pattennet"], [0.0], folds=[0], configuration="gpu_full")
    g2 = build_graph(501, ["pattennet"], [0.0], folds=[0], configuration="gpu_full", seg_gpus=2)
    seg = g2.jobs["seg/0"]
    assert seg.gpus == 2 and seg.argv[seg.argv.index("-num_gpus") + 1] == "2"
    assert "-num_gpus" not in g1.jobs["seg/0"].argv and g1.jobs["seg/0"].gpus == 1
    assert seg.hours == pytest.approx(g1.jobs["seg/0"].hours / 2)
    assert g2.jobs["vae/0"].gpus == 1 and "-num_gpus" not in g2.jobs["vae/0"].argv
    assert slurm_resources(seg)["gres"] == "gpu:2" and slurm_resources(seg)["cpus_per_task"] == 8
    # list scheduling by hand: S (2 GPUs, 1 h) and A, B (1 GPU, 1 h each) on 2 GPUs: S holds both -> 2 h
    jobs = [_job("S", 1.0), _job("A", 1.0), _job("B", 1.0)]
    jobs[0].gpus = 2
    assert Graph("d", {j.name: j for j in jobs}, "c", [0]).wall_hours(2) == pytest.approx(2.0)
    assert Graph("d", {j.name: j for j in jobs}, "c", [0]).wall_hours(3) == pytest.approx(2.0)  # 4 GPU-h on 3
    assert Graph("d", {j.name: j for j in jobs}, "c", [0]).wall_hours(4) == pytest.approx(1.0)
    # the local launcher hands a 2-GPU job two of --gpus (CUDA_VISIBLE_DEVICES=0,1) and never more than it has
    monkeypatch.setattr(launchers, "check_gpus", lambda gpus: [str(x) for x in gpus] if gpus else None)
    probe = "import os, sys; open(sys.argv[1], 'w').write(os.environ['CUDA_VISIBLE_DEVICES'])"
    mk = (lambda n, gpus: Job(n, "x", 0, _py(probe) + [str(tmp_path / f"{n}.done")], [],
                              {"kind": "newer", "path": str(tmp_path / f"{n}.done"), "than": []}, 1.0, 1.0, gpus=gpus))
    g = Graph("d", {"S": mk("S", 2), "A": mk("A", 1), "B": mk("B", 1)}, "c", [0])
    res = run_local(g, tmp_path / "run", gpus=["0", "1"], progress=False)
    assert sorted(res["finished"]) == ["A", "B", "S"]
    assert sorted((tmp_path / "S.done").read_text(encoding="utf-8").split(",")) == ["0", "1"]
    assert (tmp_path / "A.done").read_text(encoding="utf-8") in ("0", "1")
    with pytest.raises(LaunchError, match="more GPUs than --gpus gives"):
        run_local(Graph("d", {"T": mk("T", 3)}, "c", [0]), tmp_path / "run2", gpus=["0", "1"], progress=False)


def test_local_launcher_refuses_a_job_another_launch_runs(tmp_path):
    t = tmp_path
    job = Job("A", "x", 0, _py("open(__import__('sys').argv[1], 'w').write('ok')") + [str(t / "A.done")], [],
              {"kind": "newer", "path": str(t / "A.done"), "than": []}, 0.0, 1.0)
    child = Job("B", "x", 0, _py("pass"), ["A"], {"kind": "newer", "path": str(t / "B.done"), "than": []}, 0.0, 1.0)
    held = JobLock(lock_file(t / "run", "A"))
    assert held.acquire({"job": "A"})  # another (live) launch on this host: this test process itself
    try:
        res = run_local(Graph("d", {"A": job, "B": child}, "c", [0]), t / "run", progress=False)
    finally:
        held.release()
    assert res["busy"] == ["A"] and res["blocked"] == ["B"] and not (t / "A.done").exists()


def test_bad_launch_input(phantom_env, monkeypatch):
    with pytest.raises(LaunchError, match="no CUDA GPU|GPUs 0"):
        check_gpus(["0", "7"] if not __import__("torch").cuda.is_available() else ["999"])
    g = build_graph(501, ["pattennet"], [1.0], folds=[0], configuration="gpu_full")
    biggest = max(j.gpu_gb for j in g.jobs.values() if j.gpu_gb is not None)
    with pytest.raises(LaunchError, match=r"do not fit 0\.01 GB .*seg/0"):
        check_gpu_memory(g, 0.01)
    check_gpu_memory(g, biggest + 0.1)  # fits: no error
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    with pytest.raises(LaunchError, match="no `sbatch` on PATH"):
        check_slurm("debug")
    res = slurm_resources(g.jobs["seg/0"])
    assert res["gres"] == "gpu:1" and res["time"] == math.ceil(g.jobs["seg/0"].hours * 60 * 1.5) + 15
    assert "gres" not in slurm_resources(g.jobs["quality/0"])  # a CPU job asks for no GPU
    assert "gres" not in slurm_resources(g.jobs["seg/0"], gpus_per_job=0)


def test_experiment_dry_run_cli(phantom_env, capsys):
    from neonet_toolkit.run.experiment import main

    assert main(["501", "--archs", "pattennet", "--ratios", "0", "1", "--folds", "0", "1", "--dry-run",
                 "--configuration", "gpu_full"]) == 0
    out = capsys.readouterr().out
    assert "| seg/0 | 0 | — |" in out and "| ldm/1 | 1 | vae/1 |" in out
    assert "neonet_train Dataset501_NeoNetPhantom vae 1 --c" in out
    assert " 1 GPU :" in out and " 2 GPUs:" in out and "critical path" in out
    layout = ResultLayout.for_dataset(501)
    assert not layout.experiment_folder.exists()  # a dry run writes nothing
