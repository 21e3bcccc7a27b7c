"""Foreign signatures over bnc's kernels, so that code ported from another
library runs unchanged on NumPy arrays.

- ``bnc.compat.torch``: torch.nn.functional's batch_norm, instance_norm,
  layer_norm, group_norm and rms_norm, with PyTorch 2.13's parameter names,
  order, kinds and defaults.
- ``bnc.compat.onnx``: the ONNX operators BatchNormalization,
  InstanceNormalization, LayerNormalization, GroupNormalization and
  RMSNormalization as functions: inputs positional (ONNX names), attributes
  keyword-only (ONNX names and defaults), outputs as the operator's.

See docs/guide/compat.md.
"""
from bnc.compat import onnx, torch

__all__ = ["onnx", "torch"]
