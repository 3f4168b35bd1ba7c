"""``fsmtl bench convert``: seconds to convert a 60,000-image CIFAR-100-format input to cifar-fs.

The input is written in the real ``cifar-100-python`` layout (Python pickles with bytes keys,
``data`` uint8 [N, 3072] in R/G/B planes, 500 train + 100 test images per fine class) with random
pixels, into a temporary folder; conversion then runs through ``fsmtl convert`` itself.
Target: under 30 s on a 2-core CPU.
"""

from __future__ import annotations

import pickle
import tempfile
import time
from pathlib import Path

import numpy as np

from fsmtl.core.cli import CliParser, plain_doc
from fsmtl.preprocess.splitlists import cifar100_names

TARGET_S = 30.0


def write_fake_cifar100(
    root: Path, train_per_class: int = 500, test_per_class: int = 100, seed: int = 0
) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}`` with random pixels in the real layout.

    Returns:
        The ``cifar-100-python`` folder.
    """
    fine_names, coarse_names, fine_to_coarse = cifar100_names()
    d = Path(root) / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = np.tile(np.arange(100), per_class)  # interleaved, as the real files are shuffled
        rng.shuffle(fine)
        batch = {
            b"filenames": [f"img_{i}.png".encode() for i in range(len(fine))],
            b"batch_label": f"{name} batch 1 of 1".encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": [fine_to_coarse[f] for f in fine],
            b"data": rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8),
        }
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {
        b"fine_label_names": [n.encode() for n in fine_names],
        b"coarse_label_names": [n.encode() for n in coarse_names],
    }
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return d


def main(argv: list[str]) -> int:
    from fsmtl.benchmarks.common import check_writable, format_table, median, positive_int, write_results
    from fsmtl.preprocess.config import PreprocessConfig
    from fsmtl.preprocess.run import convert
    from fsmtl.benchmarks.limits import check_flags

    p = CliParser(prog="fsmtl bench convert", description=plain_doc(__doc__))
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--runs", type=positive_int, default=3, help="timed conversions, median taken (default 3)")
    p.add_argument("--workers", type=positive_int, default=None, help="decoding threads (default: all CPUs)")
    args = p.parse_args(argv)
    check_flags(args, {"--runs": 1, "--workers": 1})
    check_writable(args.json)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fsmtl-bench-convert-") as tmp:
        t0 = time.perf_counter()
        src = write_fake_cifar100(Path(tmp))
        write_s = time.perf_counter() - t0
        times = []
        for r in range(args.runs):
            cfg = PreprocessConfig(
                "cifar-fs", Path(tmp) / f"out{r}", src=src, workers=args.workers, progress=False
            )
            t0 = time.perf_counter()
            result = convert(cfg)
            times.append(time.perf_counter() - t0)
        n = sum(s["n_images"] for s in result["splits"].values())
    rows.append(
        {
            "input": "cifar-100-python (dir)",
            "images": n,
            "median_s": median(times),
            "min_s": min(times),
            "runs": len(times),
            "target_s": TARGET_S,
            "ok": median(times) < TARGET_S,
        }
    )
    print(format_table(rows))
    print(f"(writing the fake input took {write_s:.1f} s; not counted)")
    write_results(
        args.json,
        "convert",
        {"benchmark": "cifar-fs", "runs": args.runs, "workers": args.workers},
        rows,
        times_s=times,
    )
    if args.json:
        print(f"wrote {args.json}")
    return 0
