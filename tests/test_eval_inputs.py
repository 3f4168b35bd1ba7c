"""The eval Python API checks its inputs up front and names the argument at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fsmtl.eval import adapt, adapt_scores, evaluate_backbone, load_run
from fsmtl.models.heads.finetune import FinetuneConfig
from fsmtl.cli import main as fsmtl_main
from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.shard_reader import load_split

FEATURE_HEADS = ["logreg", "proto", "proto_euclidean", "ridge", "svm"]
TASK = dict(ways=5, shots=1, queries=2, n_tasks=2)


@pytest.fixture(scope="module")
def run_dir(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_eval_protocol import write_run  # tests/ is on sys.path

    return write_run(tmp_path_factory.mktemp("runs") / "r", tiny_shards)


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


@pytest.fixture(scope="module")
def task_images(tiny_shards):
    """3-way 2-shot support images [6,32,32,3], labels [6], queries [6,32,32,3]."""
    test = load_split(tiny_shards, "test")
    rows = [int(test.class_offsets[c]) + i for c in range(3) for i in range(4)]
    images = np.asarray(test.images)[rows]
    is_support = np.tile(np.arange(4) < 2, 3)
    return images[is_support], np.repeat(np.arange(3), 2), images[~is_support]


def _task(t: int = 2, s_per: int = 2, q: int = 6, d: int = 16, ways: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(t, ways * s_per, d, generator=g)
    labels = torch.arange(ways).repeat_interleave(s_per).expand(t, -1).clone()
    return support, labels, torch.randn(t, q, d, generator=g)


# --- evaluate_backbone ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(queries=0), r"queries: expected an integer >= 1, got 0"),
        (dict(n_tasks=0), r"n_tasks: expected an integer >= 1, got 0"),
        (dict(batch_tasks=-5), r"batch_tasks: expected an integer >= 1, got -5"),
        (dict(ways=1), r"ways: expected an integer >= 2"),
        (dict(shots=1.5), r"shots: expected an integer >= 1, got 1.5"),
        (dict(dtype=torch.int64), r"dtype: expected None, torch.float32, torch.float16 or torch.bfloat16, got torch.int64"),
        (dict(dtype="bf16"), r"dtype: expected .* got 'bf16'"),
        (dict(heads="logreg"), r"heads: expected a list of head names"),
        (dict(head_options={"logerg": {"C": 1.0}}), r"head_options: options for \['logerg'\].*requested \['logreg'\]"),
        (dict(head_options={"logreg": {"C": -1.0}}), r"head logreg: C must be a finite number > 0"),
        (dict(finetune={"steps": 2}), r"finetune: expected an eval.heads.finetune.FinetuneConfig"),
    ],
    ids=["queries-0", "n_tasks-0", "batch_tasks-negative", "ways-1", "shots-float", "dtype-int64", "dtype-string",
         "heads-string", "head-options-typo", "head-options-range", "finetune-dict"],
)
def test_evaluate_backbone_raises_an_error_naming_the_bad_argument(run, tiny_shards, bad, match):
    split = load_split(tiny_shards, "test")
    with pytest.raises(FsmtlError, match=match):
        evaluate_backbone(run.model, split, run.mean, run.std, **{**TASK, **bad})


def test_evaluate_backbone_checks_its_arguments_before_embedding_any_image(run, tiny_shards):
    calls = []
    hook = run.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(FsmtlError, match="head_options"):
            evaluate_backbone(run.model, load_split(tiny_shards, "test"), run.mean, run.std,
                              heads=["logreg", "proto"], head_options={"logerg": {"C": 1.0}}, **TASK)  # fmt: skip
    finally:
        hook.remove()
    assert calls == []


def test_evaluate_backbone_refuses_mean_and_std_that_do_not_fit_the_images(run, tiny_shards):
    split = load_split(tiny_shards, "test")
    with pytest.raises(FsmtlError, match=r"mean: expected 3 finite numbers"):
        evaluate_backbone(run.model, split, [0.5], run.std, **TASK)
    with pytest.raises(FsmtlError, match=r"std: expected 3 finite numbers > 0"):
        evaluate_backbone(run.model, split, run.mean, [0.2, 0.0, 0.2], **TASK)


def test_evaluate_backbone_and_load_run_refuse_cuda_without_cuda_in_the_same_words(run, run_dir, tiny_shards,
                                                                                   monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FsmtlError, match=r"^device='cuda': CUDA is not available on this machine$"):
        evaluate_backbone(run.model, load_split(tiny_shards, "test"), run.mean, run.std, device="cuda", **TASK)
    with pytest.raises(FsmtlError, match=r"^device='cuda': CUDA is not available on this machine$"):
        load_run(run_dir, device="cuda")


def test_evaluate_backbone_accepts_numpy_integers_and_dtype_none(run, tiny_shards):
    split = load_split(tiny_shards, "test")
    a = evaluate_backbone(run.model, split, run.mean, run.std, **TASK)
    b = evaluate_backbone(run.model, split, run.mean, run.std, ways=np.int64(5), shots=np.int32(1),
                          queries=np.int64(2), n_tasks=np.int64(2), batch_tasks=np.int64(1), dtype=None)  # fmt: skip
    assert a["logreg"]["per_task"] == b["logreg"]["per_task"] and b["logreg"]["n_tasks"] == 2


def test_evaluate_backbone_applies_options_only_to_their_own_head(run, tiny_shards):
    split = load_split(tiny_shards, "test")
    out = evaluate_backbone(run.model, split, run.mean, run.std, heads=["logreg", "svm"],
                            head_options={"svm": {"C": 0.5}}, **TASK)  # fmt: skip
    assert set(out) == {"logreg", "svm"} and all(out[h]["n_tasks"] == 2 for h in out)


# --- adapt --------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", FEATURE_HEADS)
def test_adapt_of_an_empty_batch_of_tasks_is_an_empty_int64_prediction(head):
    pred = adapt(torch.zeros(0, 10, 16), torch.zeros(0, 10, dtype=torch.long), torch.zeros(0, 6, 16), head=head)
    assert pred.dtype == torch.int64 and pred.shape == (0, 6)
    scores = adapt_scores(torch.zeros(0, 10, 16), torch.zeros(0, 10, dtype=torch.long), torch.zeros(0, 6, 16),
                          head=head, ways=5)  # fmt: skip
    assert scores.shape == (0, 6, 5)


def test_adapt_scores_of_an_empty_batch_needs_ways_and_bad_options_still_fail():
    empty = (torch.zeros(0, 10, 16), torch.zeros(0, 10, dtype=torch.long), torch.zeros(0, 6, 16))
    with pytest.raises(FsmtlError, match=r"adapt_scores: an empty batch of tasks \(T = 0\) needs ways="):
        adapt_scores(*empty)
    with pytest.raises(FsmtlError, match="unknown option"):
        adapt(*empty, head="svm", lam=1.0)
    with pytest.raises(FsmtlError, match="at least 2 classes"):
        adapt(*empty, ways=1)


@pytest.mark.parametrize("head", FEATURE_HEADS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["support", "query"])
def test_every_head_raises_fsmtl_error_for_non_finite_features(head, value, where):
    support, labels, query = _task(seed=1)
    (support if where == "support" else query)[1, 3, 7] = value
    with pytest.raises(FsmtlError, match=f"adapt: {where} features contain NaN or infinite values"):
        adapt(support, labels, query, head=head)


def test_svm_head_with_non_finite_support_raises_fsmtl_error_not_a_linalg_error():
    support, labels, query = _task(t=1, seed=2)
    support[0, 0, 0] = float("nan")
    with pytest.raises(FsmtlError):
        adapt(support, labels, query, head="svm")


@pytest.mark.parametrize("head", FEATURE_HEADS)
def test_normalize_must_be_a_bool(head):
    support, labels, query = _task(seed=3)
    with pytest.raises(FsmtlError, match=f"head {head}: normalize must be True or False, got 'no'"):
        adapt(support, labels, query, head=head, normalize="no")
    assert adapt(support, labels, query, head=head, normalize=False).shape == (2, 6)


@pytest.mark.parametrize("head", FEATURE_HEADS)
def test_one_task_with_no_queries_gives_an_empty_prediction(head):
    support, labels, query = _task(t=1, seed=4)
    pred = adapt(support[0], labels[0], query[0, :0], head=head)
    assert pred.dtype == torch.int64 and pred.shape == (0,)


# --- load_run, Run.embed, Run.predict ------------------------------------------------------------


def test_load_run_refuses_a_checkpoint_file_with_a_checkpoint_name_that_disagrees(run_dir):
    best = run_dir / "checkpoints" / "best.pt"
    with pytest.raises(FsmtlError, match=r"checkpoint='last': path='.*best.pt' is itself a checkpoint file"):
        load_run(best, "last")
    with pytest.raises(FsmtlError, match="is itself a checkpoint file"):
        load_run(best, str(run_dir / "checkpoints" / "last.pt"))
    assert load_run(best).path == best and load_run(best, "best").path == best
    assert load_run(run_dir, "last").path == run_dir / "checkpoints" / "last.pt"
    assert load_run(run_dir).path == best


def test_cli_refuses_a_checkpoint_file_with_a_disagreeing_checkpoint_in_flag_words(run_dir, capsys):
    rc = fsmtl_main(["eval", "--run", str(run_dir / "checkpoints" / "best.pt"), "--checkpoint", "last",
                     "--tasks", "2", "--shots", "1", "--queries", "2", "--device", "cpu"])  # fmt: skip
    assert rc == 2
    assert "--checkpoint last: --run " in capsys.readouterr().err


def test_python_api_errors_name_arguments_not_cli_flags(run_dir):
    with pytest.raises(FsmtlError) as e:
        load_run(None)
    assert str(e.value) == "path: expected a run directory or a checkpoint file, got None"
    with pytest.raises(FsmtlError, match=r"^path: .*\(checkpoint='last' picks from a run directory\)$"):
        load_run(None, "last")
    with pytest.raises(FsmtlError, match=r"^device='gpu7': expected auto, cpu, cuda or cuda:N$"):
        load_run(run_dir, device="gpu7")
    for call in (lambda: load_run(None), lambda: load_run(run_dir, device="gpu7")):
        with pytest.raises(FsmtlError) as e:
            call()
        assert "--" not in str(e.value)


def test_embed_accepts_numpy_integer_batch_sizes_but_not_bools(run, task_images):
    support = task_images[0]
    ref = run.embed(support)
    torch.testing.assert_close(run.embed(support, batch_size=np.int64(4)), ref)
    with pytest.raises(FsmtlError, match="batch_size must be an integer >= 1, got True"):
        run.embed(support, batch_size=True)


@pytest.mark.parametrize(
    "options,match",
    [(dict(steps=1.5), "steps must be an integer >= 1, got 1.5"), (dict(steps=0), "steps must be an integer >= 1"),
     (dict(lr=0.0), "lr must be a finite number > 0"), (dict(lr=float("nan")), "lr must be a finite number > 0"),
     (dict(momentum=0.9), r"unknown option\(s\) \['momentum'\]")],
    ids=["steps-float", "steps-0", "lr-0", "lr-nan", "unknown"],
)
def test_predict_finetune_rejects_bad_steps_and_lr_with_a_clear_error(run, task_images, options, match):
    with pytest.raises(FsmtlError, match=f"head finetune: {match}"):
        run.predict(*task_images, head="finetune", **options)


def test_finetune_config_checks_its_own_fields():
    with pytest.raises(FsmtlError, match="steps must be an integer >= 1, got 1.5"):
        FinetuneConfig(steps=1.5)
    assert FinetuneConfig(steps=np.int64(2)).steps == 2


@pytest.mark.parametrize("head", ["logreg", "finetune"])
def test_predict_label_shape_error_shows_the_users_shapes(run, task_images, head):
    support, labels, query = task_images
    with pytest.raises(FsmtlError) as e:
        run.predict(support, labels[None], query, head=head, **({"steps": 1} if head == "finetune" else {}))
    assert str(e.value) == ("predict: support_labels must be [6] (one per support image: support_images is "
                            "[6, 32, 32, 3]), got [1, 6]")  # fmt: skip


@pytest.mark.parametrize("head", ["logreg", "svm", "finetune"])
def test_predict_with_no_query_images_gives_an_empty_int64_prediction(run, task_images, head):
    support, labels, query = task_images
    pred = run.predict(support, labels, query[:0], head=head)
    assert pred.dtype == torch.int64 and pred.shape == (0,)


def test_predict_with_no_query_images_still_checks_labels_and_options(run, task_images):
    support, labels, query = task_images
    with pytest.raises(FsmtlError, match="no support example of class 1"):
        run.predict(support, np.array([0, 0, 2, 2, 2, 2]), query[:0])
    with pytest.raises(FsmtlError, match="steps must be"):
        run.predict(support, labels, query[:0], head="finetune", steps=1.5)
