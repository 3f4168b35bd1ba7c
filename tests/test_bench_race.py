"""fsmtl bench race: the curve arithmetic, the job reuse, the learn2learn line's unpacking, and one
tiny race end to end on the embedded Omniglot images (no timing thresholds)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from fsmtl.benchmarks import bench_race as br
from fsmtl.core.errors import FsmtlError


def _pts(errs: list[float], minutes: list[float]) -> list[dict]:
    return [{"minutes": m, "err": e, "per_task": [100.0 - e] * 4, "step": i} for i, (e, m) in enumerate(zip(errs, minutes))]


def test_reach_minutes_interpolates_between_points_and_flags_a_first_point_bound() -> None:
    curve = [{"minutes": 1.0, "err": 50.0}, {"minutes": 2.0, "err": 30.0}, {"minutes": 3.0, "err": 20.0}]
    assert br.reach_minutes(curve, 40.0) == (pytest.approx(1.5), False)
    assert br.reach_minutes(curve, 20.0) == (pytest.approx(3.0), False)
    assert br.reach_minutes(curve, 60.0) == (1.0, True)  # reached before the first point: a bound
    assert br.reach_minutes(curve, 10.0) == (None, False)


def test_mean_curve_averages_seeds_point_by_point_and_pools_the_tasks_for_the_interval() -> None:
    a = [{"minutes": 1.0, "err": 40.0, "per_task": [60.0, 60.0]}, {"minutes": 2.0, "err": 20.0, "per_task": [80.0, 80.0]}]
    b = [{"minutes": 1.2, "err": 60.0, "per_task": [40.0, 40.0]}, {"minutes": 2.2, "err": 30.0, "per_task": [70.0, 70.0]},
         {"minutes": 2.4, "err": 28.0, "per_task": [72.0, 72.0]}]
    m = br.mean_curve([a, b])
    assert len(m) == 2  # the shortest run sets the length; each run's final point is last
    assert m[0]["minutes"] == pytest.approx(1.1) and m[0]["err"] == pytest.approx(50.0)
    assert m[1]["err"] == pytest.approx(24.0)  # (80 + 80 + 72 + 72) / 4 correct -> 24% error
    assert m[0]["ci95"] > 0 and m[0]["n"] == 2


def test_summary_ranks_by_final_error_and_states_mtls_speed_up_at_the_others_best_error() -> None:
    mtl = br.mean_curve([_pts([40.0, 25.0, 20.0], [1.0, 2.0, 3.0])])
    proto = br.mean_curve([_pts([50.0, 40.0, 30.0], [1.0, 2.0, 3.0])])
    slow = br.mean_curve([_pts([90.0, 85.0, 80.0], [1.0, 2.0, 3.0])])
    rows, speed = br.summarize({"mtl": mtl, "protonet": proto, "l2l": slow},
                               {"mtl": [20.0], "protonet": [30.0], "l2l": [80.0]},
                               {"mtl": [3], "protonet": [3], "l2l": [3]})  # fmt: skip
    assert [r["method"] for r in rows] == ["mtl", "protonet", "l2l"]
    assert rows[1]["min_to_mtl_final_note"] == "not reached"
    by = {s["method"]: s for s in speed}
    # protonet's best, 30%, came at 3 min; MTL crossed 30% between 1 min (40%) and 2 min (25%): at 1 + 10/15
    assert by["protonet"]["mtl_min"] == pytest.approx(1 + 10 / 15)
    assert by["protonet"]["speedup"] == pytest.approx(3.0 / (1 + 10 / 15))
    assert by["l2l"]["at_least"] is True  # MTL was already below 80% at its first point


def test_core_shares_split_the_cores_and_refuse_more_jobs_than_cores() -> None:
    cores = sorted(os.sched_getaffinity(0))
    shares = br.core_shares(1)
    assert shares == [set(cores)]
    with pytest.raises(FsmtlError, match="--jobs"):
        br.core_shares(len(cores) + 1)


def test_a_finished_job_is_reused_only_with_the_same_command(tmp_path: Path) -> None:
    run = tmp_path / "mtl-s0"
    (run / "checkpoints").mkdir(parents=True)
    argv = ["python", "-m", "fsmtl", "train", "--seed", "0"]
    (run / "race_job.json").write_text(json.dumps({"argv": argv[1:], "done": True}))
    assert not br.finished("mtl", run, argv)  # no final weights yet
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    assert br.finished("mtl", run, argv)
    assert not br.finished("mtl", run, [*argv[:-1], "1"])  # another seed: retrain


def test_l2l_unpacking_keeps_only_the_training_alphabets_and_refuses_unsafe_members(tmp_path: Path) -> None:
    from fsmtl.benchmarks.race_l2l import unpack_training_images

    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("set/Greek/character01/a.png", b"png1")
        f.writestr("set/Latin/character01/b.png", b"png2")
        f.writestr("set/Greek/character02/c.txt", b"not an image")
    assert unpack_training_images([z], ["Greek"], tmp_path / "out") == 1
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["Greek__character01", "a.png"]
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as f:
        f.writestr("set/Greek/../x.png", b"png")
    with pytest.raises(FsmtlError, match="bad.zip"):
        unpack_training_images([bad], ["Greek", ".."], tmp_path / "out2")


def test_bad_flags_are_one_line_errors() -> None:
    with pytest.raises(FsmtlError, match="snapshot-minutes"):
        br.parse_args(["--minutes", "1", "--snapshot-minutes", "2"])
    with pytest.raises(FsmtlError, match="--preset"):
        br.parse_args(["--preset", "nope"])


@pytest.mark.slow
def test_a_tiny_race_on_the_embedded_omniglot_writes_curves_summary_and_plot(tmp_path: Path) -> None:
    methods = ["mtl", "protonet"]
    from fsmtl.core.optional import optional_problem

    if optional_problem("learn2learn") is None:
        methods.append("l2l")
    out = tmp_path / "race"
    argv = ["--out", str(out), "--methods", ",".join(methods), "--minutes", "0.06", "--snapshot-minutes", "0.03",
            "--tasks", "12", "--seeds", "2", "--lead", "1", "--jobs", str(min(2, len(os.sched_getaffinity(0))))]
    assert br.main(argv) == 0
    doc = json.loads((out / "race.json").read_text())
    assert (out / "race.png").stat().st_size > 0
    assert {r["method"] for r in doc["rows"]} == set(methods)
    leader = doc["lead"][0]
    assert next(r for r in doc["rows"] if r["method"] == leader)["seeds"] == 2
    assert sum(1 for r in doc["runs"] if r["method"] == leader) == 2
    for run in doc["runs"]:
        pts = run["points"]
        assert pts[-1]["file"] in ("last.pt", "final.pt") and len(pts) >= 2
        assert all(0.0 <= p["err"] <= 100.0 for p in pts)
        assert [p["minutes"] for p in pts] == sorted(p["minutes"] for p in pts)
        assert pts[-1]["step"] > 0
    # a second call reuses every finished run and its scores (no training, the same numbers)
    before = {r["method"]: r["final_err"] for r in doc["rows"]}
    assert br.main(argv) == 0
    again = json.loads((out / "race.json").read_text())
    assert {r["method"]: r["final_err"] for r in again["rows"]} == before


def test_per_method_learning_rates_reach_only_their_method_and_bad_ones_are_refused(tmp_path: Path) -> None:
    a = br.parse_args(["--lr", "metaoptnet=1e-3, protonet=0.005"])
    assert a.lrs == {"metaoptnet": 1e-3, "protonet": 5e-3}
    meta = br.job_argv("metaoptnet", 0, a, tmp_path / "d", tmp_path / "r")
    assert meta[meta.index("--lr") + 1] == "0.001"
    mtl = br.job_argv("mtl", 0, a, tmp_path / "d", tmp_path / "r")
    assert "--lr" not in mtl
    # every fsmtl method trains on the train split alone, as the l2l line must (the preset merges val)
    assert "--no-trainval" in mtl and mtl[mtl.index("--val-split") + 1] == "none"
    assert br.parse_args([]).lrs == {}
    for bad, match in (("l2l=1e-3", "l2l keeps"), ("nope=1e-3", "METHOD=LR"), ("metaoptnet", "METHOD=LR"),
                       ("mtl=1e-3,mtl=2e-3", "twice"), ("mtl=0", "--lr mtl"), ("mtl=nan", "--lr mtl"),
                       ("mtl=inf", "--lr mtl"), ("mtl=fast", "--lr mtl")):  # fmt: skip
        with pytest.raises(FsmtlError, match=match):
            br.parse_args(["--lr", bad])
