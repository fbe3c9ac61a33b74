"""Block-size / num_warps grid of the Triton kernel on a CUDA GPU.

Times ``sparse_conv2d_triton`` over ``block_r x block_p x num_warps`` for CaffeNet conv2-5 with the
real pruned weights (``caffenet_l1_acc56.3``) and the ResNet-50 3x3 layer of
``sparsecnn.bench.gpu_layers.DEFAULT_LAYERS`` at density 0.1, and prints, per layer and batch,
the default configuration's time, the best one and its time (medians of CUDA-event timings).
Each configuration is checked against cuDNN (fp32) before it is timed.

    python benchmarks/gpu_tune.py --out gpu_tune.json             # on a CUDA machine
    TRITON_INTERPRET=1 python benchmarks/gpu_tune.py --smoke      # the script itself, on CPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch
import torch.nn.functional as F

from sparsecnn.bench.gpu_layers import DEFAULT_LAYERS, _cudnn_tf32, _time
from sparsecnn.ops import triton_conv


def _layers(smoke: bool) -> list[dict]:
    if smoke:
        return [dict(name="tiny", in_channels=4, out_channels=8, kernel=(3, 3), stride=1, padding=1, groups=1,
                     input_hw=(6, 6), weight=(torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) < 0.3)))]
    from sparsecnn.bench.layers import caffenet_layers

    out = [l for l in caffenet_layers() if l["name"].split(".")[-1] in ("conv2", "conv3", "conv4", "conv5")]
    res = next(l for l in DEFAULT_LAYERS if l["name"] == "resnet50.layer1.conv2")
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 64, 3, 3, generator=gen)
    out.append(dict(res, weight=w * (torch.rand(w.shape, generator=gen) < 0.1)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--block-r", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--block-p", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="one tiny layer, one configuration (CPU interpreter)")
    ap.add_argument("--out", default=None, help="JSON file of every timing")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    grid = [(4, 16, 4)] if args.smoke else list(itertools.product(args.block_r, args.block_p, args.warps))
    rows = []
    print(f"{'layer':<22}{'N':>4}{'dens':>7}{'default ms':>12}{'best ms':>10}{'best (r, p, warps)':>22}{'cudnn ms':>10}")
    for lay in _layers(args.smoke):
        w = torch.as_tensor(lay["weight"], dtype=torch.float32).to(dev)
        g, pad = int(lay["groups"]), (int(lay["padding"]),) * 2
        h, wd = lay["input_hw"]
        values, col_idx, row_ptr = triton_conv.pack_dense_weight(w)
        dens = float((w != 0).float().mean())
        plans = {br: triton_conv.build_plan(values, col_idx, row_ptr, w.shape, (h, wd), (1, 1), pad, (1, 1), g,
                                            device=dev, block_r=br) for br in {r for r, _, _ in grid} | {4}}
        for nb in args.batches:
            x = torch.randn(nb, w.shape[1] * g, h, wd, device=dev)
            ref = F.conv2d(x.double(), w.double(), None, 1, pad, 1, g)
            times = {}
            for br, bp, nw in grid + [(4, None, 4)]:  # (4, None, 4): the default launch
                def run(br=br, bp=bp, nw=nw):
                    return triton_conv.sparse_conv2d_triton(x, values, col_idx, row_ptr, w.shape, None, (1, 1), pad,
                                                            (1, 1), g, False, plan=plans[br], block_p=bp, num_warps=nw)
                try:
                    err = ((run().double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
                except Exception as e:  # e.g. a configuration out of the GPU's resources
                    rows.append(dict(layer=lay["name"], batch=nb, block_r=br, block_p=bp, num_warps=nw, error=repr(e)))
                    continue
                if err > 1e-4:
                    raise SystemExit(f"{lay['name']} N={nb} {(br, bp, nw)}: relative error {err:.2e}")
                t0 = time.perf_counter()
                times[(br, bp, nw)] = _time(run, dev, args.repeats, 5, "events")
                rows.append(dict(layer=lay["name"], batch=nb, density=dens, block_r=br, block_p=bp, num_warps=nw,
                                 ms=times[(br, bp, nw)], wall_s=time.perf_counter() - t0))
            torch.backends.cudnn.benchmark = True
            with _cudnn_tf32(False):
                t_cudnn = _time(lambda: F.conv2d(x, w, None, 1, pad, 1, g), dev, args.repeats, 5, "events")
            if (4, None, 4) not in times:
                print(f"{lay['name']:<22}{nb:>4}{dens:>7.3f}  failed: {rows[-1].get('error')}", flush=True)
                continue
            best = min((k for k in times if k[1] is not None), key=times.get, default=(4, None, 4))
            print(f"{lay['name']:<22}{nb:>4}{dens:>7.3f}{times[(4, None, 4)]:>12.4f}{times[best]:>10.4f}"
                  f"{str(best):>22}{t_cudnn:>10.4f}", flush=True)
            rows.append(dict(layer=lay["name"], batch=nb, density=dens, baseline="cudnn_fp32", ms=t_cudnn))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(device=torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
                           torch=torch.__version__, rows=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
