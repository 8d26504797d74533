"""Speed of the mask-scoring methods against a faithful per-image baseline, in one run.

Times GradMask (and RISE, ViT-CX) on:
  * the embedded digits model on CPU (64 images; GradMask maps checked equal to the baseline),
  * ViT-B/16 and DeiT-B-distilled built from their timm configs (random weights) on CPU,
  * the same on CUDA when a GPU is present (256 images, bf16 and fp32),
and reports explanations per second, peak memory, the speed-up over the faithful baseline
(benchmarks/faithful_gradmask.py: one image at a time, fp32, eager attention, all of an image's
masked copies in one forward) and, on CUDA, the fraction of the measured bf16 matmul roofline.

On CPU it also reports (benchmarks/speed_work.py, speed_memory.py): xvit's time against the
irreducible work of GradMask, RISE and ViT-CX (ratio >= 0.95 means no overhead over it), every
method batched against one image at a time, and every method's peak memory between 10 and
1,000 images (and 1,000 and 16,000 masks where a method counts masks).

    python benchmarks/bench_speed.py                 # CPU part (a few minutes on 2 cores)
    python benchmarks/bench_speed.py --gpu-only      # CUDA part only
    python benchmarks/bench_speed.py --quick         # smaller sizes, for a smoke run
    python benchmarks/bench_speed.py --only work,batching,memory --md out.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xvit
from faithful_gradmask import faithful_gradmask
from speed_memory import memory_row, memory_rows
from speed_work import OwnProcess, batching_rows, irreducible_rows, rank_agreement

#: The CPU sections, in the order they run (``--only`` picks some).
SECTIONS = ("speed", "work", "batching", "memory")


def vit_forward_flops(model: torch.nn.Module) -> float:
    """FLOPs (2 x multiply-adds) of one forward, counted from the model's shape."""
    geo = xvit.get_adapter(model).geometry
    n, d = geo.num_tokens(), geo.hidden_size
    mlp_hidden = model.blocks[0].mlp.fc1.out_features
    per_block = n * 3 * d * d + 2 * n * n * d + n * d * d + 2 * n * d * mlp_hidden
    ph, pw = geo.patch_size
    embed = (n - geo.num_prefix_tokens) * geo.in_chans * ph * pw * d
    return 2.0 * (geo.num_blocks * per_block + embed)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Any, device: torch.device) -> tuple[Any, float, float]:
    """(result, seconds, peak bytes) of one call; peak is the CUDA memory of the call, or NaN
    on CPU, where one call's peak cannot be told apart from the process's (the memory check
    runs separate processes instead)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    secs = time.perf_counter() - t0
    cuda = device.type == "cuda"
    peak = float(torch.cuda.max_memory_allocated(device)) if cuda else float("nan")
    return out, secs, peak


def matmul_tflops(device: torch.device) -> float:
    """Measured dense bf16 matmul throughput (TFLOP/s) on random data."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def build(name: str, device: torch.device, **kw: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).to(device).eval()


def embedded_model(device: torch.device) -> torch.nn.Module:
    try:
        return xvit.load_model("xvit:digits-vit", device=device)
    except xvit.XvitError:  # not shipped yet: a model of the same shape with random weights
        return build("vit_tiny_patch16_224", device, img_size=64, patch_size=8, num_classes=10)


def bench_case(
    label: str,
    model: torch.nn.Module,
    device: torch.device,
    n_images: int,
    n_baseline: int,
    *,
    precision: str = "fp32",
    batch_size: int | str = 256,
    methods: tuple[str, ...] = ("gradmask",),
    check_equal: bool = False,
    roofline: float | None = None,
    compile_model: bool = False,
    repeats: int | None = None,
) -> list[dict[str, Any]]:
    """Time the faithful baseline and each method in interleaved rounds (best of ``repeats``).

    Interleaving matters on shared machines, whose speed drifts over tens of seconds: the
    baseline and xvit see the same conditions in every round, so their ratio is fair.
    """
    geo = xvit.get_adapter(model).geometry
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_images, geo.in_chans, *geo.image_size, generator=g).to(device)
    with torch.no_grad():
        targets = model(x[:n_baseline]).argmax(-1)
    repeats = repeats or (3 if device.type == "cpu" else 1)
    jobs: dict[str, tuple[int, Any]] = {
        "gradmask (faithful baseline)": (
            n_baseline,
            lambda: faithful_gradmask(model, x[:n_baseline], targets),
        )
    }
    params_of: dict[str, dict[str, Any]] = {}
    for method in methods:
        params: dict[str, Any] = {"batch_size": batch_size}
        if method in ("gradmask", "rise", "vitcx"):
            params["precision"] = precision
            if compile_model:
                params["compile"] = True
        if method == "rise":
            params["num_masks"] = 1000
        if xvit.get_method(method).randomized:
            params["seed"] = 0
        n = n_images if method == "gradmask" else max(1, n_images // 8)
        # warm-up (and compilation) outside the timing
        xvit.explain(method, model, x[:1], **params)
        params_of[method] = params
        jobs[method] = (n, lambda m=method, n=n, p=params: xvit.explain(m, model, x[:n], **p))
    best: dict[str, tuple[float, float]] = {}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, (_n, fn) in jobs.items():
            out, secs, peak = timed(fn, device)
            old_secs, old_peak = best.get(name, (float("inf"), peak))
            best[name] = (min(old_secs, secs), max(old_peak, peak))
            results[name] = out
    base = results["gradmask (faithful baseline)"]
    base_rate = n_baseline / best["gradmask (faithful baseline)"][0]
    flops = vit_forward_flops(model)
    k = 3 * (geo.num_blocks - 1) * 4
    rows = []
    for name, (n, _fn) in jobs.items():
        secs, peak = best[name]
        is_base = name == "gradmask (faithful baseline)"
        row = dict(
            case=label,
            method=name,
            precision="fp32" if is_base else precision,
            images=n,
            seconds=secs,
            expl_per_s=n / secs,
            peak_mb=None if math.isnan(peak) else peak / 2**20,
            speedup=1.0 if is_base else (n / secs) / base_rate if name == "gradmask" else None,
        )
        if name == "gradmask":
            if check_equal:
                ours = xvit.explain(
                    "gradmask", model, x[:n_baseline], target=targets, **params_of[name]
                ).map
                err = ((ours - base).abs().max() / base.abs().max()).item()
                row["max_rel_diff_vs_baseline"] = err
            achieved = (k + 3) * flops * n / secs / 1e12
            row["tflops"] = achieved
            if roofline:
                row["roofline_fraction"] = achieved / roofline
        rows.append(row)
        print("row:", json.dumps(row), flush=True)
    return rows


def memory_scaling(device: torch.device, small: int, large: int) -> dict[str, Any]:
    """Peak CUDA memory of a `large`-image GradMask job over a `small`-image one, same
    batch_size (the model's weights included). The images live in host memory, as they do
    when they come from files or a data loader; xvit moves them to the device one group at a
    time. (On CPU, speed_memory.py measures every method in fresh processes.)"""
    model = build("vit_base_patch16_224", device, num_classes=1000)
    peaks = {}
    for n in (small, large):
        x = torch.randn(n, 3, 224, 224)
        torch.cuda.empty_cache()
        _, _, peaks[n] = timed(
            lambda x=x: xvit.explain("gradmask", model, x, batch_size=128, precision="bf16"),
            device,
        )
    return dict(
        device=str(device),
        small_images=small,
        large_images=large,
        peak_small_mb=peaks[small] / 2**20,
        peak_large_mb=peaks[large] / 2**20,
        ratio=peaks[large] / peaks[small],
    )


def cuda_memory_rows(
    device: torch.device, methods: list[str], small: int, large: int
) -> list[dict[str, Any]]:
    """Every method's peak CUDA memory for ``large`` images over ``small`` (the tiny ViT of
    the CPU check, quick parameters; the images live in host memory)."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=4, num_classes=10
    )
    model = model.to(device).eval()
    rows = []
    for method in methods:
        params = quick(method)
        peaks = {}
        for n in (small, large):
            x = torch.randn(n, 3, 32, 32)
            torch.cuda.empty_cache()
            run = lambda x=x, m=method, p=params: xvit.explain(m, model, x, **p)  # noqa: E731
            _, _, peaks[n] = timed(run, device)
        rows.append(memory_row(method, "images", small, large, peaks[small], peaks[large]))
        print("cuda memory:", json.dumps(rows[-1]), flush=True)
    return rows


def gpu_floor_lines(rows: list[dict[str, Any]], extra: dict[str, Any]) -> list[str]:
    """Issue 18's GPU floors against this run's numbers, one line each."""
    lines = []
    vit = [
        r
        for r in rows
        if r["case"] == "ViT-B/16 (random), CUDA"
        and r["method"] == "gradmask"
        and r["precision"] == "bf16"
    ]
    if vit:
        rate = vit[0]["expl_per_s"]
        lines.append(f"ViT-B/16 GradMask bf16: {rate:.1f} expl/s (floor 85): {rate >= 85}")
        tf = vit[0].get("tflops")
        if tf is not None:
            peak = extra.get("bf16_matmul_tflops", float("nan"))
            lines.append(f"  {tf:.0f} TFLOP/s of a measured {peak:.0f} TFLOP/s bf16 matmul peak")
    ranks = extra.get("vit_b16_bf16_vs_fp32")
    if ranks:
        rho = ranks["spearman_min"]
        lines.append(f"bf16 vs fp32 maps: min Spearman {rho:.4f} (floor 0.99): {rho >= 0.99}")
    memory = [extra["memory_cuda"]] if "memory_cuda" in extra else []
    memory += extra.get("memory_cuda_methods", [])
    for m in memory:
        name = m.get("method", "gradmask (ViT-B/16)")
        lines.append(f"CUDA memory {name}: {m['ratio']:.2f}x (floor 1.2): {m['ratio'] <= 1.2}")
    return lines


SPEED_COLUMNS = [
    "case",
    "method",
    "precision",
    "images",
    "expl_per_s",
    "speedup",
    "peak_mb",
    "tflops",
    "roofline_fraction",
    "max_rel_diff_vs_baseline",
]
WORK_COLUMNS = [
    "case",
    "method",
    "images",
    "masked_images_per_image",
    "xvit_s",
    "irreducible_s",
    "ratio_vs_irreducible",
    "speedup_vs_authors_style_own_process",
    "speedup_vs_authors_style_xvit_process",
    "spearman_mean",
    "spearman_min",
    "same_top_patch",
]
BATCHING_COLUMNS = [
    "method",
    "images",
    "batched_s_per_image",
    "one_at_a_time_s_per_image",
    "batched_gain",
]
MEMORY_COLUMNS = ["method", "work", "small", "large", "peak_small_mb", "peak_large_mb", "ratio"]


def markdown_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """``rows`` as a markdown table of ``cols`` (3 significant digits)."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("")
            else:
                cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(markdown_table(rows, SPEED_COLUMNS))


def available_methods() -> list[str]:
    """Every registered method that can run here (an optional dependency may be missing)."""
    return [n for n in xvit.list_methods() if not xvit.get_method(n).unavailable_reason()]


def quick(method: str) -> dict[str, Any]:
    cls = xvit.get_method(method)
    return {**cls.quick_params, **({"seed": 0} if cls.randomized else {})}


def cpu_work_sections(
    sections: set[str], quick_run: bool, extra: dict[str, Any], bf16: bool | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The irreducible-work, batching and memory tables on CPU; GradMask in bf16 too where
    ``bf16`` (default: where the CPU has AVX-512, whose BF16 extension makes bf16 fast)."""
    if bf16 is None:
        bf16 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    cpu = torch.device("cpu")
    out: dict[str, list[dict[str, Any]]] = {}
    model = embedded_model(cpu)
    geo = xvit.get_adapter(model).geometry
    x = torch.randn(64, geo.in_chans, *geo.image_size, generator=torch.Generator().manual_seed(0))
    if "work" in sections:
        n = 16 if quick_run else 64
        with torch.no_grad():
            targets = model(x[:n]).argmax(-1)
        # the authors-style baseline in a process of its own too, as its users run it
        with OwnProcess(faithful_gradmask, model, x[:n], targets) as own_process:
            rows = irreducible_rows(
                "embedded ViT, CPU",
                model,
                x[:n],
                [("gradmask", {}), *([("gradmask", {"precision": "bf16"})] if bf16 else [])],
                batch_size=64,
                rounds=3 if quick_run else 5,
                baselines={
                    "own_process": own_process,
                    "xvit_process": lambda: faithful_gradmask(model, x[:n], targets),
                },
            )
        if bf16:
            agreement = rank_agreement("gradmask", model, x[:n], {"batch_size": 64})
            for row in rows:
                if row["precision"] == "bf16":
                    row.update(agreement)
        else:
            print(
                f"no bf16 row: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no "
                f"fast bf16 matmul (AVX512-BF16/AMX), where bf16 runs several times slower "
                f"than fp32; --bf16 times it anyway",
                flush=True,
            )
        rows += irreducible_rows(
            "embedded ViT, CPU",
            model,
            x[: max(2, n // 8)],
            [("rise", {"num_masks": 1000, "seed": 0}), ("vitcx", {})],
            batch_size=64,
            rounds=3,
        )
        out["work"] = rows
        print(markdown_table(rows, WORK_COLUMNS), flush=True)
    if "batching" in sections:
        rows = batching_rows(
            "embedded ViT, CPU",
            model,
            x[: 4 if quick_run else 16],
            {m: quick(m) for m in available_methods()},
            rounds=2 if quick_run else 3,
        )
        out["batching"] = rows
        print(markdown_table(rows, BATCHING_COLUMNS), flush=True)
    if "memory" in sections:
        methods = available_methods()
        out["memory"] = memory_rows(methods, 10, 100 if quick_run else 1000)
        print(markdown_table(out["memory"], MEMORY_COLUMNS), flush=True)
    extra.update({f"cpu_{k}": v for k, v in out.items()})
    return out


def write_markdown(path: Path, rows: list[dict[str, Any]], tables: dict[str, list]) -> None:
    """The tables of a run as one markdown file (the README's speed section quotes it)."""
    parts = [f"# bench_speed.py results ({torch.__version__}, {time.strftime('%Y-%m-%d')})"]
    if rows:
        parts += ["## Explanations per second and speed-up", markdown_table(rows, SPEED_COLUMNS)]
    titles = {
        "work": ("## Against the irreducible work", WORK_COLUMNS),
        "batching": ("## Batched against one image at a time", BATCHING_COLUMNS),
        "memory": ("## Peak memory against the amount of work (VmHWM)", MEMORY_COLUMNS),
        "memory_cuda": ("## Peak CUDA memory against the number of images", MEMORY_COLUMNS),
    }
    for key, (title, cols) in titles.items():
        if key in tables:
            parts += [title, markdown_table(tables[key], cols)]
    path.write_text("\n\n".join(parts) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU cases")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (CPU and CUDA)")
    ap.add_argument("--memory-only", action="store_true", help="only the CUDA memory-scaling check")
    ap.add_argument("--bf16", action="store_true", help="time GradMask in bf16 on any CPU")
    ap.add_argument("--json", type=Path, default=None, help="write all rows to this file")
    ap.add_argument("--md", type=Path, default=None, help="write the tables to this file")
    ap.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated CPU sections to run, of {', '.join(SECTIONS)}",
    )
    args = ap.parse_args()
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    tables: dict[str, list[dict[str, Any]]] = {}
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"torch": torch.__version__, "timm": timm.__version__}
    cpu = torch.device("cpu")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if not args.gpu_only and "speed" in sections:
        n = 16 if args.quick else 64
        embedded = embedded_model(cpu)
        rows += bench_case(
            "embedded ViT, CPU",
            embedded,
            cpu,
            n,
            n,
            batch_size=64,
            methods=("gradmask", "rise", "vitcx"),
            check_equal=True,
            repeats=5,
        )
        if args.compile:
            rows += bench_case(
                "embedded ViT, CPU, compiled",
                embedded,
                cpu,
                n,
                n,
                batch_size=64,
                compile_model=True,
                repeats=5,
            )
        rows += bench_case(
            "embedded ViT, CPU (bf16 autocast; maps not exact)",
            embedded,
            cpu,
            n,
            n,
            batch_size=64,
            precision="bf16",
            repeats=5,
        )
        nb = 1 if args.quick else 2
        rows += bench_case(
            "ViT-B/16 (random), CPU",
            build("vit_base_patch16_224", cpu),
            cpu,
            nb,
            nb,
            batch_size=32,
            repeats=2,
        )
        rows += bench_case(
            "DeiT-B-distilled (random), CPU",
            build("deit_base_distilled_patch16_224", cpu),
            cpu,
            nb,
            nb,
            batch_size=32,
            repeats=2,
        )
    if not args.gpu_only and not args.memory_only:
        tables = cpu_work_sections(sections, args.quick, extra, True if args.bf16 else None)
    if args.memory_only and torch.cuda.is_available():
        extra["memory_cuda"] = memory_scaling(torch.device("cuda"), 10, 1000)
        print("memory:", json.dumps(extra["memory_cuda"]), flush=True)
    elif torch.cuda.is_available():
        gpu = torch.device("cuda")
        extra["gpu"] = torch.cuda.get_device_name(gpu)
        roof = matmul_tflops(gpu)
        extra["bf16_matmul_tflops"] = roof
        print("gpu:", extra["gpu"], "bf16 matmul TFLOP/s:", round(roof, 1), flush=True)
        n = 32 if args.quick else 256
        cases = (
            ("vit_base_patch16_224", "ViT-B/16"),
            ("deit_base_distilled_patch16_224", "DeiT-B-distilled"),
        )
        for name, label in cases:
            model = build(name, gpu)
            for precision in ("bf16", "fp32"):
                more = precision == "bf16" and label == "ViT-B/16"
                rows += bench_case(
                    f"{label} (random), CUDA",
                    model,
                    gpu,
                    n,
                    16,
                    precision=precision,
                    batch_size=512,
                    methods=("gradmask", "rise", "vitcx") if more else ("gradmask",),
                    check_equal=precision == "fp32",
                    roofline=roof,
                )
            del model
        vit = build("vit_base_patch16_224", gpu)
        images = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        extra["vit_b16_bf16_vs_fp32"] = rank_agreement(
            "gradmask", vit, images.to(gpu), {"batch_size": 512}
        )
        print("bf16 vs fp32 ranks:", json.dumps(extra["vit_b16_bf16_vs_fp32"]), flush=True)
        del vit
        extra["memory_cuda"] = memory_scaling(gpu, 10, 100 if args.quick else 1000)
        print("memory:", json.dumps(extra["memory_cuda"]), flush=True)
        extra["memory_cuda_methods"] = cuda_memory_rows(
            gpu, available_methods(), 10, 100 if args.quick else 1000
        )
        tables["memory_cuda"] = extra["memory_cuda_methods"]
        if args.compile:
            rows += bench_case(
                "ViT-B/16 (random), CUDA, compiled",
                build("vit_base_patch16_224", gpu),
                gpu,
                n,
                16,
                precision="bf16",
                batch_size=512,
                roofline=roof,
                compile_model=True,
            )
    print_table(rows)
    if torch.cuda.is_available() and not args.memory_only:
        print("\n".join(gpu_floor_lines(rows, extra)), flush=True)
    print(json.dumps(extra, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, **extra}, indent=1))
    if args.md:
        write_markdown(args.md, rows, tables)


if __name__ == "__main__":
    main()
