"""``python -m fsmtl.benchmarks.gpu_report gpu_check.json``: the GPU check's numbers as a Markdown section
for benchmarks/RESULTS.md, each target with its verdict (PASS / FAIL / not measured).

Written so that the session that gets a GPU spends its device minutes measuring, not transcribing:
run it on the JSON that ``bash benchmarks/gpu_check.sh`` brought back and paste the output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fsmtl.core.cli import CliParser, plain_doc
# the targets of the pipeline, trainer and GPU-check issues
GPU_TARGETS = {
    "pipeline_images_per_s": 1_000_000.0,  # torch back end, 84x84 Lee19 task batches, at least
    "pipeline_share_of_step": 0.02,  # of a ResNet-12 training step, under
    "train_speedup": 3.0,  # bf16 + channels_last + compile over fp32 eager, at least
    "data_wait_frac": 0.02,  # of the training step, under
    "eval_speedup": 500.0,  # 2,000 tasks' batched logreg on the GPU over scikit-learn's loop, at least
    "eval_agreement_pct": 99.5,  # identical predictions, at least
    "gpu_hours_60_epochs": 0.15,  # the mini-ImageNet 5-shot recipe projected at 60 epochs, at most
    "total_seconds": 480.0,  # the whole check, under 8 minutes
}
ABOVE = ("pipeline_images_per_s", "train_speedup", "eval_speedup", "eval_agreement_pct")  # targets to reach, not stay under


def _result(doc: dict[str, Any], step: str) -> dict[str, Any] | None:
    st = doc.get("steps", {}).get(step)
    if st is None:
        return None
    return st.get("result", st.get("partial_result"))  # partial: what a step cut by the time limit wrote


AT_MOST = ("gpu_hours_60_epochs",)  # "at most" targets; the other upper bounds are strict ("under")


def _verdict(value: float | None, target: float, above: bool, at_most: bool = False) -> str:
    if value is None:
        return "not measured"
    return "PASS" if (value >= target if above else (value <= target if at_most else value < target)) else "FAIL"


def summarize_check(doc: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a gpu_check JSON document (None where a step failed or did not run)."""
    out: dict[str, Any] = {"gpu": doc.get("hardware", {}).get("gpu"), "torch": doc.get("hardware", {}).get("torch"),
                           "date": doc.get("hardware", {}).get("date"), "errors": {}}  # fmt: skip
    for name, st in doc.get("steps", {}).items():
        if "error" in st:
            out["errors"][name] = st["error"]
    out["triton_error"] = (_result(doc, "check-augment") or {}).get("triton")
    out["checks_ok"] = {s: (_result(doc, s) or {}).get("ok") for s in ("check-sampling", "check-augment", "check-heads")}
    pipe = _result(doc, "pipeline") or {}
    torch84 = [r for r in pipe.get("rows", []) if r.get("size") == 84 and r.get("backend") == "torch" and r.get("device") != "cpu"]
    ref84 = [r for r in pipe.get("rows", []) if r.get("size") == 84 and r.get("backend") == "reference"]
    out["pipeline_images_per_s"] = torch84[0]["images_per_s"] if torch84 else None
    out["pipeline_share_of_step"] = torch84[0].get("pipeline_share_of_step") if torch84 else None
    out["reference_images_per_s"] = ref84[0]["images_per_s"] if ref84 else None
    out["pipeline_rows"] = [r for r in pipe.get("rows", []) if r.get("images_per_s")]
    train = _result(doc, "train") or {}
    rows = {r["config"]: r for r in train.get("rows", []) if "config" in r}
    out["train_rows"] = rows
    out["train_shape"] = f"{train.get('config', {}).get('model', '?')}, {train.get('config', {}).get('size', '?')}x{train.get('config', {}).get('size', '?')}"
    fast = rows.get("bf16-cl-compile") or {}
    out["train_speedup"] = fast.get("speedup_vs_fp32_eager")
    out["data_wait_frac"] = (train.get("data_wait") or {}).get("data_wait_frac")
    out["preset_peak_mem_mb"] = (train.get("preset_memory") or {}).get("peak_mem_mb")
    out["flops"] = train.get("flops")
    out["matmul_peak_tflops"] = train.get("matmul_peak_tflops")
    ev = _result(doc, "eval") or {}
    ev_rows = ev.get("rows", [])
    out["eval"] = {"rows": ev_rows, "agreement_pct": ev.get("prediction_agreement_pct"),
                   "accuracy_difference_pct": ev.get("accuracy_difference_pct")}  # fmt: skip
    gpu_rows = [r for r in ev_rows if r.get("device") != "cpu" and r.get("speedup")]
    out["eval_speedup"] = gpu_rows[0]["speedup"] if gpu_rows else None
    out["eval_agreement_pct"] = ev.get("prediction_agreement_pct")
    out["epoch"] = _result(doc, "epoch")
    out["gpu_hours_60_epochs"] = ((out["epoch"] or {}).get("projected_gpu_hours") or {}).get("60_epochs")
    out["ddp"] = _result(doc, "ddp")
    out["total_seconds"] = doc.get("script_seconds")  # the whole script (gpu_check.sh writes it beside the JSON)
    out["python_seconds"] = doc.get("total_seconds") or sum(float(st.get("seconds", 0)) for st in doc.get("steps", {}).values())
    return out


def _num(v: Any, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(s: dict[str, Any]) -> str:
    """The RESULTS.md section."""
    lines = [f"## GPU check: {s['gpu'] or 'unknown GPU'} (torch {s['torch']}, {s['date']})", "",
             "Command: `bash benchmarks/gpu_check.sh` on the lent machine; this section: "
             "`python -m fsmtl.benchmarks.gpu_report gpu_check.json`.", "",
             "| target | measured | verdict |", "| --- | --- | --- |"]  # fmt: skip
    t = GPU_TARGETS
    lines += [
        f"| pipeline, 84x84 Lee19 task batches >= 1,000,000 images/s | {_num(s['pipeline_images_per_s'])} images/s "
        f"(seed's pipeline, all cores: {_num(s['reference_images_per_s'])}) | "
        f"{_verdict(s['pipeline_images_per_s'], t['pipeline_images_per_s'], True)} |",
        f"| pipeline < 2% of a ResNet-12 step | {_num(s['pipeline_share_of_step'] and 100 * s['pipeline_share_of_step'], '{:.2f}%')} | "
        f"{_verdict(s['pipeline_share_of_step'], t['pipeline_share_of_step'], False)} |",
        f"| ResNet-12 84x84: bf16 + channels_last + compile >= 3x fp32 eager | {_num(s['train_speedup'], '{:.2f}x')} | "
        f"{_verdict(s['train_speedup'], t['train_speedup'], True)} |",
        f"| data wait < 2% of the step | {_num(s['data_wait_frac'] and 100 * s['data_wait_frac'], '{:.2f}%')} | "
        f"{_verdict(s['data_wait_frac'], t['data_wait_frac'], False)} |",
        f"| 2,000 test tasks, logreg on the GPU >= 500x scikit-learn's per-task loop | {_num(s['eval_speedup'], '{:,.0f}x')} | "
        f"{_verdict(s['eval_speedup'], t['eval_speedup'], True)} |",
        f"| ... with identical predictions on >= 99.5% of queries | {_num(s['eval_agreement_pct'], '{:.3f}%')} | "
        f"{_verdict(s['eval_agreement_pct'], t['eval_agreement_pct'], True)} |",
        f"| mini-ImageNet 5-shot recipe <= 0.15 GPU-hours (projected at 60 epochs) | {_num(s['gpu_hours_60_epochs'], '{:.3f} h')} | "
        f"{_verdict(s['gpu_hours_60_epochs'], t['gpu_hours_60_epochs'], False, at_most=True)} |",
        f"| the whole check < 8 minutes | {_num(s['total_seconds'], '{:.0f} s')} (script; Python part "
        f"{_num(s['python_seconds'], '{:.0f} s')}) | {_verdict(s['total_seconds'], t['total_seconds'], False)} |",
        "",
        "CUDA vs CPU checks: " + ", ".join(f"{k} {'ok' if v else ('FAILED' if v is False else 'not run')}" for k, v in s["checks_ok"].items()),
        *([f"The fused Triton kernel failed on the GPU: {s['triton_error']}"] if s.get("triton_error") else []),
        "",
    ]  # fmt: skip
    if s.get("pipeline_rows"):
        lines += ["| pipeline (5-way x 10-image tasks) | kernel | device | images/s | ms/batch | share of a step |",
                  "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in s["pipeline_rows"]:
            share = r.get("pipeline_share_of_step")
            lines.append(f"| {r['size']}px {r['backend']} | {r.get('kernel', '-')} | {r['device']} | {_num(r['images_per_s'])} | "
                         f"{_num(r.get('ms_per_batch'), '{:.3f}')} | {_num(share and 100 * share, '{:.2f}%')} |")  # fmt: skip
        lines.append("")
    if s["train_rows"]:
        lines += [f"| training step ({s['train_shape']}) | images/s | ms/step | x fp32 eager | model TFLOP/s | MFU (own dtype) | MFU (bf16 peak) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for name, r in s["train_rows"].items():
            lines.append(f"| {name} | {_num(r.get('images_per_s'))} | {_num(r.get('ms_per_step'), '{:.1f}')} | "
                         f"{_num(r.get('speedup_vs_fp32_eager'), '{:.2f}')} | {_num(r.get('model_tflops'), '{:.1f}')} | "
                         f"{_num(r.get('mfu') and 100 * r['mfu'], '{:.1f}%')} | {_num(r.get('mfu_vs_bf16_peak') and 100 * r['mfu_vs_bf16_peak'], '{:.1f}%')} |")  # fmt: skip
        lines += ["", f"Peak memory of a mini-ImageNet 5-shot preset step: {_num(s['preset_peak_mem_mb'])} MiB."]
        if s.get("flops"):
            f, pk = s["flops"], s.get("matmul_peak_tflops") or {}
            lines += [f"Model FLOPs, counted (FlopCounterMode over one training step: matrix products and convolutions, "
                      f"forward and backward): {_num(f.get('flops_per_image') and f['flops_per_image'] / 1e9, '{:.2f}')} GFLOP "
                      f"an image a step ({_num(f.get('forward_flops_per_image') and f['forward_flops_per_image'] / 1e9, '{:.2f}')} "
                      f"forward). MFU is over a dense square matmul measured in the same run: fp32 {_num(pk.get('float32'), '{:.1f}')}, "
                      f"bf16 {_num(pk.get('bfloat16'), '{:.1f}')} TFLOP/s."]  # fmt: skip
        lines.append("")
    if s["eval"]["rows"]:
        lines += ["| test tasks, logreg C=3 | device | tasks | tasks/s | x scikit-learn |", "| --- | --- | --- | --- | --- |"]
        for r in s["eval"]["rows"]:
            lines.append(f"| {r['method']} | {r['device']} | {r.get('tasks')} | {_num(r.get('tasks_per_s'))} | {_num(r.get('speedup'), '{:.1f}')} |")
        lines += ["", f"Identical predictions on {_num(s['eval']['agreement_pct'], '{:.2f}%')} of the compared queries.", ""]
    ep = s["epoch"]
    if ep:
        hours = ep.get("projected_gpu_hours", {})
        lines += [
            f"mini-ImageNet 5-shot preset on mini-ImageNet-shaped synthetic shards: {_num(ep.get('train_s_per_step'), '{:.4f}')} s "
            f"a step, {_num(ep.get('images_per_s'))} images/s, data wait {_num(ep.get('data_wait_frac') and 100 * ep['data_wait_frac'], '{:.2f}%')}, "
            f"validation {_num(ep.get('val_s'), '{:.1f}')} s for {ep.get('steps_per_epoch_measured')} timed steps.",
            "",
            "| the seed's epoch | seconds an epoch | GPU-hours for 30 / 60 / 100 epochs | the seed's published run |",
            "| --- | --- | --- | --- |",
            f"| 1600 training tasks + 400 validation tasks | {_num(ep.get('seconds_per_seed_epoch'), '{:.0f}')} | "
            + " / ".join(_num(hours.get(f"{e}_epochs"), "{:.2f}") for e in (30, 60, 100)) + f" | {ep.get('seed_published_gpu_hours')} V100-hours |",
            "",
        ]  # fmt: skip
    dd = s.get("ddp")
    if dd:
        lines += [f"torchrun, one rank, DistributedDataParallel over {dd.get('backend_expected')}: "
                  + ("a first run of one epoch and its --resume to a second both finished "
                     f"({dd.get('first_s')} s and {dd.get('resume_s')} s, process start included; steps {dd.get('steps')})"
                     if dd.get("ok") else f"FAILED ({ {k: v for k, v in dd.items() if k.endswith(('_rc', 'log_tail'))} })"), ""]  # fmt: skip
    if s["errors"]:
        lines += ["Steps that failed: " + "; ".join(f"{k}: {v}" for k, v in s["errors"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m fsmtl.benchmarks.gpu_report", description=plain_doc(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("json", type=Path, help="gpu_check.json from benchmarks/gpu_check.sh")
    a = p.parse_args(argv)
    from fsmtl.core.fileio import read_json

    doc = read_json(a.json, "gpu_check JSON")
    total = a.json.parent / "gpu_check_total_s.txt"  # written by gpu_check.sh
    if total.is_file():
        doc["script_seconds"] = float(total.read_text().strip() or "nan")
    s = summarize_check(doc)
    print(markdown(s))
    verdicts = [_verdict(s[k], v, k in ABOVE, k in AT_MOST) for k, v in GPU_TARGETS.items()]
    return 0 if all(v == "PASS" for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
