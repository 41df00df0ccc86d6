"""`auto` by measurement (runtime.tuning): the fastest plan that passes the self-check serves, the timings are kept
per artifact, CPU, threads and runtimes, and read back at the next start. Made-up plans, timings and checks (no
model); tests/test_self_check.py and the integration test below run the real ones."""

from __future__ import annotations

import json
import logging
import weakref

import numpy as np
import pytest

from rerankrt.errors import BackendUnavailableError
from rerankrt.precision import Precision
from rerankrt.runtime import loader
from rerankrt.runtime.machine import Machine
from rerankrt.runtime.plan import ServingPlan, Skipped
from rerankrt.runtime.self_check import SelfCheck
from rerankrt.runtime.tuning import TimingCache, TimingKey, time_golden

OV = ServingPlan("openvino", "cpu", Precision.FP32, graphs={"scorer": "model.onnx"})
OV_BF16 = ServingPlan("openvino", "cpu", Precision.BF16, graphs={"scorer": "model.onnx"})
ORT = ServingPlan("onnxruntime", "cpu", Precision.FP32, graphs={"scorer": "model.onnx"})
TORCH = ServingPlan("torch", "cpu", Precision.FP32, weights="model")
CUDA = ServingPlan("torch", "cuda", Precision.BF16, weights="model")
ZEN4 = Machine(physical_cores=2, cpu_features=("avx2", "fma", "avx512f"), cpu_model="AMD EPYC 9R14")


class Opened:
    def __init__(self, plan):
        self.plan = plan
        self.name, self.device = plan.backend, plan.device


def check_result(plan: ServingPlan, passed: bool) -> SelfCheck:
    failures = [] if passed else ["max |Δlogit| 1 > 0.0001"]
    return SelfCheck(passed, plan.describe(), plan.precision.value, "rule", "2 cores", 24, 2000, 0.1,
                     0.0 if passed else 1.0, 0.0, 1.0, 1.0, 0.0, failures)  # fmt: skip


class Bench:
    """Made-up plan behaviour: which plans fail to load, which miss the self-check, how long each takes."""

    def __init__(self, monkeypatch, seconds: dict, missing=(), broken=()):
        """`seconds`: plan -> its time, as (plan, seconds) pairs (plans are not hashable)."""
        self.seconds, self.missing, self.broken = dict((p.describe(), s) for p, s in seconds), missing, broken
        self.opened: list[ServingPlan] = []
        self.timed: list[ServingPlan] = []
        self.alive: weakref.WeakSet = weakref.WeakSet()  # backends not yet released
        self.most_alive = 0
        monkeypatch.setattr(loader, "open_backend", self.open)

    def open(self, plan, family):
        if plan in self.broken:
            raise BackendUnavailableError("cannot load")
        self.opened.append(plan)
        self.most_alive = max(self.most_alive, len(self.alive) + 1)
        backend = Opened(plan)
        self.alive.add(backend)
        return backend

    def check(self, backend, plan):
        return check_result(plan, plan not in self.missing)

    def time(self, backend, plan):
        self.timed.append(plan)
        return self.seconds[plan.describe()]


@pytest.fixture
def cache(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"made": "up"}')
    return TimingCache(TimingKey.of(manifest, ZEN4, 2), tmp_path / "cache")


def choose(bench, cache, plans):
    return loader.open_fastest(plans, None, bench.check, bench.time, cache, None)


def test_auto_serves_the_fastest_plan_and_records_every_timing(monkeypatch, cache, caplog):
    bench = Bench(monkeypatch, ((OV, 0.9), (ORT, 0.4), (TORCH, 1.5)))
    with caplog.at_level(logging.INFO, logger="rerankrt"):
        backend, plan, check, timings = choose(bench, cache, [OV, ORT, TORCH])
    assert plan == ORT and backend.plan == ORT and check.passed
    assert bench.timed == [OV, ORT, TORCH] and bench.opened == [OV, ORT, TORCH, ORT]  # timed, then the fastest
    assert bench.most_alive == 1  # one model in memory at a time
    assert [(t.plan, t.seconds, t.outcome) for t in timings.plans] == [
        (OV.describe(), 0.9, "slower"), (ORT.describe(), 0.4, "served"), (TORCH.describe(), 1.5, "slower"),
    ]  # fmt: skip
    assert json.loads(cache.path.read_text())["timings"]["chosen"] == ORT.describe()
    assert any("selected by measurement" in r.message and ORT.describe() in r.message for r in caplog.records)


def test_a_plan_that_misses_the_self_check_or_fails_to_load_is_never_chosen_however_fast(monkeypatch, cache):
    bench = Bench(
        monkeypatch, ((OV, 0.1), (ORT, 0.2), (OV_BF16, 0.05), (TORCH, 0.9)), missing=[OV, OV_BF16], broken=[ORT]
    )
    _, plan, _, timings = choose(bench, cache, [OV_BF16, OV, ORT, TORCH])
    assert plan == TORCH and bench.timed == [TORCH]
    outcomes = {t.plan: t.outcome for t in timings.plans}
    assert outcomes[OV.describe()] == "missed the self-check on this machine"
    assert outcomes[ORT.describe()] == "cannot load" and outcomes[TORCH.describe()] == "served"


def test_none_passing_is_an_error_naming_each_plan(monkeypatch, cache):
    bench = Bench(monkeypatch, (), missing=[OV], broken=[ORT])
    skipped = Skipped("tensorrt", "cuda", "no CUDA device")
    with pytest.raises(BackendUnavailableError, match="openvino on cpu.*missed the self-check.*onnxruntime.*cannot"):
        choose(bench, cache, [skipped, OV, ORT])
    assert not cache.path.exists()


def test_the_gpu_plans_are_timed_before_the_cpu_ones_and_a_gpu_plan_serves_when_one_passes(monkeypatch, cache):
    bench = Bench(monkeypatch, ((CUDA, 0.5), (OV, 0.01)))
    _, plan, _, _ = choose(bench, cache, [CUDA, OV])
    assert plan == CUDA and bench.timed == [CUDA]  # a CPU plan is never compared with a GPU one


def test_the_next_start_opens_the_recorded_choice_without_timing(monkeypatch, cache, caplog):
    choose(Bench(monkeypatch, ((OV, 0.9), (ORT, 0.4))), cache, [OV, ORT])
    again = Bench(monkeypatch, ())
    with caplog.at_level(logging.INFO, logger="rerankrt"):
        _, plan, check, timings = choose(again, cache, [OV, ORT])
    assert plan == ORT and check.passed and again.opened == [ORT] and not again.timed
    assert timings.chosen == ORT.describe() and any("plan timings of this machine" in r.message for r in caplog.records)


def test_a_recorded_choice_that_misses_the_self_check_now_falls_back_to_the_fixed_order(monkeypatch, cache):
    choose(Bench(monkeypatch, ((OV, 0.9), (ORT, 0.4))), cache, [OV, ORT])
    _, plan, _, timings = choose(Bench(monkeypatch, (), missing=[ORT]), cache, [OV, ORT])
    assert plan == OV and timings is None


@pytest.mark.parametrize(
    "change",
    [
        {"cpu_model": "Intel(R) Xeon(R) Platinum 8488C"},
        {"cpu_features": ("avx2", "fma")},
    ],
)
def test_another_cpu_measures_again(monkeypatch, cache, tmp_path, change):
    choose(Bench(monkeypatch, ((OV, 0.9), (ORT, 0.4))), cache, [OV, ORT])
    other = Machine(**{**ZEN4.__dict__, **change})
    other_cache = TimingCache(TimingKey.of(tmp_path / "manifest.json", other, 2), cache.path.parent)
    assert other_cache.path != cache.path and other_cache.read() is None
    bench = Bench(monkeypatch, ((OV, 0.3), (ORT, 0.4)))
    assert choose(bench, other_cache, [OV, ORT])[1] == OV and bench.timed == [OV, ORT]


def test_other_threads_runtimes_or_artifact_are_other_keys(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    key = TimingKey.of(manifest, ZEN4, 2)
    assert TimingKey.of(manifest, ZEN4, 1).file_name() != key.file_name()
    runtimes = TimingKey(key.artifact, key.cpu, key.features, 2, (("onnxruntime", "0.0.1"),))
    assert runtimes.file_name() != key.file_name()
    manifest.write_text('{"other": 1}')
    assert TimingKey.of(manifest, ZEN4, 2).file_name() != key.file_name()


@pytest.mark.parametrize(
    "content",
    ["not json", '{"key": {}, "timings": {}}', "[1]", "x" * (2 << 20), None],
    ids=["not-json", "other-key", "not-an-object", "huge", "bad-seconds"],
)
def test_an_unreadable_timings_file_is_measured_again_with_a_warning(monkeypatch, cache, caplog, content):
    choose(Bench(monkeypatch, ((OV, 0.9), (ORT, 0.4))), cache, [OV, ORT])
    if content is None:  # well-formed but for a negative time
        data = json.loads(cache.path.read_text())
        data["timings"]["plans"][0]["seconds"] = -1
        content = json.dumps(data)
    cache.path.write_text(content)
    bench = Bench(monkeypatch, ((OV, 0.3), (ORT, 0.4)))
    with caplog.at_level(logging.WARNING, logger="rerankrt"):
        assert choose(bench, cache, [OV, ORT])[1] == OV
    assert bench.timed == [OV, ORT] and any("unreadable" in r.message for r in caplog.records)


def test_a_cache_folder_that_cannot_be_written_costs_a_warning_only(monkeypatch, tmp_path, caplog):
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "file").write_text("")
    cache = TimingCache(TimingKey.of(tmp_path / "manifest.json", ZEN4, 2), tmp_path / "file" / "cache")
    with caplog.at_level(logging.WARNING, logger="rerankrt"):
        assert choose(Bench(monkeypatch, ((OV, 0.9), (ORT, 0.4))), cache, [OV, ORT])[1] == ORT
    assert any("not kept" in r.message for r in caplog.records)


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    from rerankrt.runtime.tuning import cache_folder

    monkeypatch.delenv("RERANKRT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder() == tmp_path / "xdg" / "rerankrt" / "plan-timings"
    monkeypatch.setenv("RERANKRT_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_folder() == tmp_path / "mine" / "plan-timings"


def test_time_golden_runs_the_self_checks_batches_in_each_pass():
    seen = []
    assert time_golden(seen.append, [[0, 1], [2, 3], [4]], repeats=3) >= 0
    assert seen == [[0, 1], [2, 3], [4]] * 3


@pytest.mark.integration
def test_a_real_artifact_is_timed_once_per_machine_and_served_by_its_fastest_plan(
    artifact_dirs, monkeypatch, tmp_path, openvino_off_by
):
    from rerankrt.info import plan_timings
    from rerankrt.runtime import Reranker

    monkeypatch.setenv("RERANKRT_CACHE_DIR", str(tmp_path))
    folder = str(artifact_dirs["xlmr"])
    query, documents = "what is a panda", ["a bear", "a kind of bear from China, black and white", "a city"]
    with Reranker.load(folder, tune=True) as first:
        timings = first.model.timings
        timed = {t.plan: t.seconds for t in timings.plans if t.seconds is not None}
        assert len(timed) >= 2  # OpenVINO and ONNX Runtime at least (torch too, from the source folder)
        assert first.model.plan.describe() == timings.chosen == min(timed, key=timed.get)
        assert first.model.self_check.passed and first.model.self_check.plan == timings.chosen
        logits = first.logits(query, documents)
    with Reranker.load(folder, tune=True) as second:  # read back: the same plan, nothing timed again
        assert second.model.plan.describe() == timings.chosen
        assert second.model.timings.measured_at == timings.measured_at
        np.testing.assert_allclose(second.logits(query, documents), logits, atol=1e-4)
    recorded = plan_timings(artifact_dirs["xlmr"])
    assert recorded["measured"] and recorded["chosen"] == timings.chosen and recorded["file"].startswith(str(tmp_path))

    monkeypatch.setenv("RERANKRT_CACHE_DIR", str(tmp_path / "fresh"))
    openvino_off_by(lambda rows: np.full(rows, 1e-3))  # OpenVINO computes other numbers here: never chosen
    with Reranker.load(folder, tune=True) as third:
        assert third.model.plan.backend != "openvino"
        outcomes = {t.plan: t.outcome for t in third.model.timings.plans}
        assert [o for p, o in outcomes.items() if p.startswith("openvino")] == ["missed the self-check on this machine"]


@pytest.mark.integration
def test_export_tune_records_this_machines_timings(artifact_dirs, monkeypatch, tmp_path, capsys):
    import rerankrt.export
    from rerankrt.cli import build_parser, run_export
    from rerankrt.info import plan_timings

    monkeypatch.setenv("RERANKRT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(rerankrt.export, "export_model", lambda *args, **kwargs: None)  # the artifact is made
    folder = artifact_dirs["bert"]
    assert not plan_timings(folder)["measured"]
    assert run_export(build_parser().parse_args(["export", "model", "--out", str(folder), "--tune"])) == 0
    recorded = plan_timings(folder)
    assert recorded["measured"] and f"{recorded['chosen']} is the fastest here" in capsys.readouterr().out


def test_the_golden_set_is_timed_in_the_self_checks_batches():
    from rerankrt.runtime.self_check import GoldenGroup, GoldenSet, golden_batches

    class Encoder:
        def encode(self, query, documents):
            return [f"{query}|{document}" for document in documents]

        def collate(self, pairs):
            return list(pairs)

    group = GoldenGroup(query="q", documents=["a", "b", "c", "d", "e"], logits=[0.0] * 5)
    golden = GoldenSet(reference="made up", seed=0, batch_size=2, groups=[group])
    pairs, batches = golden_batches(Encoder(), golden)
    assert len(pairs) == 5 and batches == [["q|a", "q|b"], ["q|c", "q|d"], ["q|e"]]
