#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes on one H100/H200-class GPU): pretraining throughput of
# ViT-S/14 and ViT-B/14 in bf16 (padded, packed and block-sparse layouts; MFU of the useful
# FLOPs against the GPU's bf16 dense peak) and a warm-started 200-step run's loss terms.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine (needs aqqua-geo installed)
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh   # the same script, tiny, on a CPU (to test it)
#
# PEAK_TFLOPS: the GPU's dense bf16 peak (H100/H200 SXM: 989). Figures go to $OUT (or ./gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
if [[ "${QUICK:-0}" == 1 ]]; then ARCHS="vit_small"; STEPS=2; BATCH=8; WARM_STEPS=3; BF16=""
else ARCHS="vit_small vit_base"; STEPS=10; BATCH=64; WARM_STEPS=200; BF16="--bf16"; fi

$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/device.txt"

for arch in $ARCHS; do
  echo "== throughput $arch" | tee -a "$OUT/throughput.txt"
  timeout 240 $PY benchmarks/pretrain_throughput.py --device "$DEVICE" --arch "$arch" $BF16 \
      --batch-size "$BATCH" --steps "$STEPS" --peak-tflops "$PEAK_TFLOPS" 2>&1 | grep -v "^pretrain:" \
      | tee -a "$OUT/throughput.txt" || echo "throughput $arch failed or timed out" | tee -a "$OUT/throughput.txt"
done

# Warm start: an official-format DINOv2 ViT-S/14 checkpoint made offline from the reference
# package's model class when it is installed (random weights: the point is the pipeline and
# the loss terms from a public-model start, not the public model's quality).
echo "== warm-started run ($WARM_STEPS steps)" | tee "$OUT/warm_start.txt"
$PY - "$OUT" "$DEVICE" "$WARM_STEPS" <<'PYEOF' 2>&1 | grep -v "^pretrain:" | tee -a "$OUT/warm_start.txt"
import sys, tempfile, time
from pathlib import Path
import torch
out, device, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
try:
    from dinov2.models.vision_transformer import vit_small
    torch.manual_seed(0)
    ckpt = out / "dinov2_vits14_pretrain_random.pth"
    torch.save(vit_small(patch_size=14, img_size=518, block_chunks=0, init_values=1e-5).state_dict(), ckpt)
except ImportError:
    print("dinov2 reference not installed (pip install --no-deps dinov2): warm start skipped"); sys.exit(0)
from aqqua_geo.data import write_uvp6_store
from aqqua_geo.foundation.config import load_config
from aqqua_geo.foundation.train import pretrain
import pandas as pd
with tempfile.TemporaryDirectory() as tmp:
    store = write_uvp6_store(Path(tmp) / "store")
    cfg = load_config("cpu", [f"model.init={ckpt}", f"train.max_steps={steps}", f"train.device={device}",
                              "model.max_tokens_per_image=256", "crops.global_max_tokens=256",
                              "crops.local_max_tokens=49", "train.max_tokens_per_row=1024",
                              "train.batch_size_per_gpu=32", f"train.log_every={max(1, steps // 10)}",
                              "train.checkpoint_every=100000"])
    t0 = time.perf_counter()
    run = pretrain(cfg, store, out / "warm_run", progress=False)
    print(f"{steps} warm-started steps in {time.perf_counter() - t0:.1f} s")
    log = pd.read_csv(run / "log.csv")
    cols = [c for c in log.columns if c.endswith("_loss") or c.startswith("diag_") or c in ("step", "images_per_s")]
    print(log[cols].round(4).to_string(index=False))
    if torch.cuda.is_available():
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
PYEOF
echo "figures in $OUT/"
