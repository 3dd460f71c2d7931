"""Why `achroma export --quantize int8` quantizes what it does: agreement with float for each choice.

On the demo model folded to gray (the shipped CIFAR-10 (JPEG) demo data: 300 stratified training
images to calibrate, the 2,000 test images to compare), ONNX Runtime static QDQ, per-channel int8
weights, MinMax calibration, for:

- where the fold's border correction sits in the export: `mask` (how exports write it now: a mask
  input channel of the first conv) or `add` (added after the first conv, `export_onnx(fuse=False)`);
- whether the conv that reads the image stays float;
- weight ops only (Conv, Gemm, MatMul; the default) or every op the quantizer knows.

    python benchmarks/int8_choices.py
"""
from __future__ import annotations

import torch

from achroma.data import load_dataset
from achroma.demo import DEMO_DATA, assets_dir, default_model_path
from achroma.deploy.onnx_export import export_onnx
from achroma.deploy.quantize import QUANTIZED_OPS, Calibration, dataset_inputs, onnx_logits, quantize_int8
from achroma.fold import fold_to_gray
from achroma.io import load_checkpoint


def main() -> None:
    torch.set_num_threads(1)
    color, meta = load_checkpoint(default_model_path())
    gray, _ = fold_to_gray(color.eval(), meta["normalization"])
    gray.eval()
    source = f"tar:{assets_dir() / DEMO_DATA}"
    calib, _ = dataset_inputs(load_dataset(source, "train"), "gray", "none", 300, seed=0)
    x, y = dataset_inputs(load_dataset(source, "test"), "gray", "none")
    calibration = Calibration(images=len(calib), seed=0, dataset="demo", split="train")
    exports = {"mask": export_onnx(gray, (1, 32, 32)), "add": export_onnx(gray, (1, 32, 32), fuse=False)}
    print(f"demo model folded to gray; {len(calib)} calibration images, {len(y)} demo test images, 1 thread")
    for border, float_bytes in exports.items():
        pf = onnx_logits(float_bytes, x).argmax(1)
        print(f"border {border}: float accuracy {100 * (pf == y.numpy()).mean():.2f}%")
        for keep in (True, False):
            for ops in (QUANTIZED_OPS, None):
                int8 = quantize_int8(float_bytes, calib, calibration, keep_input_conv_float=keep, op_types=ops)
                pq = onnx_logits(int8, x).argmax(1)
                print(f"  input conv {'float' if keep else 'int8 '}, {'weight ops' if ops else 'all ops   '}: "
                      f"int8 accuracy {100 * (pq == y.numpy()).mean():.2f}%, predictions agree with float "
                      f"{100 * (pq == pf).mean():.2f}%")


if __name__ == "__main__":
    main()
