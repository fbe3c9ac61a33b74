"""File size of a pruned model saved by sparsecnn.save against torch.save of the dense model.

ResNet-50 with the 90 %-sparse DLMC masks (every conv but the first at 10 % density), the
issue's bar: at most 25 % of the dense file. Also checks that a reload gives identical outputs.

Usage: python benchmarks/file_size.py [--model resnet50] [--weights resnet50_dlmc_magnitude_pruning_0.9] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch

import sparsecnn
from sparsecnn.models import get_model
from sparsecnn.models.pruned import apply_pruned_weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--weights", default="resnet50_dlmc_magnitude_pruning_0.9")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a line")
    args = p.parse_args()
    torch.manual_seed(0)
    model = get_model(args.model).eval()
    apply_pruned_weights(model, args.weights)
    shape = tuple(getattr(model, "default_input_shape", (1, 3, 224, 224)))
    x = torch.randn(2, *shape[1:])
    fast, _ = sparsecnn.sparsify(model, x[:1], policy="all")
    with tempfile.TemporaryDirectory() as d:
        dense_path, sparse_path = os.path.join(d, "dense.pt"), os.path.join(d, "sparse.safetensors")
        torch.save(model.state_dict(), dense_path)
        sparsecnn.save(fast, sparse_path)
        back = sparsecnn.load(sparse_path)
        with torch.inference_mode():
            identical = bool(torch.equal(fast(x), back(x)))
        dense_b, sparse_b = os.path.getsize(dense_path), os.path.getsize(sparse_path)
    res = {"model": args.model, "weights": args.weights, "dense_torch_save_bytes": dense_b,
           "sparsecnn_save_bytes": sparse_b, "ratio": sparse_b / dense_b, "reload_identical": identical}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.model} ({args.weights}): torch.save of the dense model {dense_b / 2**20:.1f} MiB, "
              f"sparsecnn.save {sparse_b / 2**20:.1f} MiB = {100 * sparse_b / dense_b:.1f} % "
              f"(bar <= 25 %); reloaded model gives identical outputs: {identical}")


if __name__ == "__main__":
    main()
