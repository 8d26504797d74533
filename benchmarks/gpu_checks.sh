#!/usr/bin/env bash
# Issue 18's GPU checks in one prepared run (about 6 minutes on an H200), for a session that
# is lent a GPU through the device tool. From the repository root on the GPU machine (its
# python3 has torch, timm, transformers, scipy, safetensors, click):
#
#     bash benchmarks/gpu_checks.sh            # writes under $OUT, else benchmarks/results
#
# It runs bench_speed.py --gpu-only --compile: ViT-B/16 and DeiT-B-distilled GradMask in bf16
# and fp32 against the faithful baseline, the measured bf16 matmul peak and each row's TFLOP/s,
# bf16-vs-fp32 rank agreement of ViT-B/16 maps, GradMask's CUDA memory for 1,000 vs 10
# ViT-B/16 images and every method's for 1,000 vs 10 tiny-ViT images, and the compiled row;
# then prints each floor of the issue with its verdict.
set -euo pipefail
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
python3 benchmarks/bench_speed.py --gpu-only --compile \
    --json "$out/speed_h200.json" --md "$out/speed_h200.md" 2>&1 | tee "$out/speed_h200_log.txt"
