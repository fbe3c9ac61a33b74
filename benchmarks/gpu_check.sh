#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one pass: builds the package against the machine's
# python3 (a CUDA build of torch, and Triton), runs the GPU tests with the compiled Triton kernel,
# then the GPU layer benchmarks and the block-size grid. Results go to OUTDIR.
#
#   SPARSECNN_PRUNED_DIR=/path/to/pruned benchmarks/gpu_check.sh OUTDIR
#   STEPS="build tests" benchmarks/gpu_check.sh OUTDIR      # some of the steps
#
# Each step has its own time limit and the script goes on after a failed step, so one slow or
# broken step still leaves the others' results; the exit status is that of the first failure.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out"
py=${PYTHON:-python3}
site=$(mktemp -d)
status=0
steps=" ${STEPS:-build tests caffenet layers linear graphs tune} "  # STEPS="build tests": only those
step() {  # step NAME LIMIT_S CMD...: run CMD with its output in OUTDIR/NAME.txt
  local name=$1 limit=$2
  shift 2
  [[ $steps == *" $name "* ]] || return 0
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$out/steps.txt"
  tail -n 25 "$out/$name.txt"
  [ $rc -ne 0 ] && [ $status -eq 0 ] && status=$rc
  return $rc
}

{ nvidia-smi -L; $py -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, 'triton', triton.__version__)"; } \
  | tee "$out/env.txt"
step build 240 $py -m pip install --no-build-isolation --no-deps --target "$site" . || exit $status
export PYTHONPATH=$site TRITON_INTERPRET=0
step tests 150 $py -m pytest -q -p no:cacheprovider -ra tests/test_triton_conv.py \
  "tests/test_conv.py::test_cuda_cpu_mismatch" tests/test_gpu_module.py
step caffenet 90 $py -m sparsecnn.cli bench layers --device cuda --set caffenet --batch 1 16 32 \
  --json "$out/gpu_caffenet.json"
step layers 150 $py -m sparsecnn.bench.gpu_layers --densities 0.05 0.1 0.3 1.0 --batches 1 32 \
  --out "$out/gpu_layers.json"
step linear 45 $py - <<'PY'
# SparseLinear on CUDA against the dense fp32 layer, and its two paths forced (cuSPARSE's CSR SpMM,
# the Triton kernel), CaffeNet fc6/fc7 shapes
import torch, sparsecnn
from sparsecnn.bench.gpu_layers import _matmul_ieee, _time
from sparsecnn.ops import linear
dev = torch.device("cuda")
print(f"{'layer':<6}{'N':>4}{'dens':>6}{'sparse ms':>11}{'dense ms':>10}{'x dense':>9}{'cusparse ms':>13}{'triton ms':>11}")
for name, fin, fout in (("fc6", 9216, 4096), ("fc7", 4096, 4096)):
    for d in (0.05, 0.1, 0.3):
        lin = torch.nn.Linear(fin, fout).to(dev)
        with torch.no_grad():
            lin.weight.mul_((torch.rand_like(lin.weight) < d).float())
        sp = sparsecnn.SparseLinear.from_dense(lin.cpu()).to(dev)
        lin = lin.to(dev)
        for n in (1, 2, 4, 8, 16, 32):
            x = torch.randn(n, fin, device=dev)
            with _matmul_ieee(), torch.no_grad():
                ts, td = _time(lambda: sp(x), dev, 50, 10, "events"), _time(lambda: lin(x), dev, 50, 10, "events")
                forced, keep = [], linear.CUSPARSE_MAX_BATCH
                for cut in (n, n - 1):  # cuSPARSE, then Triton
                    linear.CUSPARSE_MAX_BATCH = cut
                    forced.append(_time(lambda: sp(x), dev, 50, 10, "events"))
                linear.CUSPARSE_MAX_BATCH = keep
            print(f"{name:<6}{n:>4}{d:>6.2f}{ts:>11.4f}{td:>10.4f}{td / ts:>9.2f}{forced[0]:>13.4f}{forced[1]:>11.4f}")
PY
step graphs 240 $py benchmarks/gpu_graphs.py --batch 1 16 --compiled --json "$out/gpu_graphs.json"
step tune 150 $py benchmarks/gpu_tune.py --out "$out/gpu_tune.json"
exit $status
