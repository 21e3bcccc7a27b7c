"""bnc - batch normalization for NumPy arrays, with C + OpenMP kernels.

Functional API (see API.md): batch_norm, batch_norm_forward, batch_norm_backward,
batch_norm_stats, combine_stats, update_running_stats, batch_renorm,
batch_renorm_forward, batch_renorm_backward, layer_norm, layer_norm_forward,
layer_norm_backward, rms_norm, rms_norm_forward, rms_norm_backward, group_norm,
group_norm_forward, group_norm_backward, instance_norm, instance_norm_forward,
instance_norm_backward, fold_batch_norm; thread control:
get_num_threads, set_num_threads, num_threads, openmp_enabled; embedding the C
core: get_include, get_library_dir, extension_kwargs; ported code:
bnc.compat.torch and bnc.compat.onnx (foreign signatures and defaults).
`bnc.layers` holds stateful layers on top of them (BatchNorm, BatchRenorm,
GroupNorm, InstanceNorm, LayerNorm, RMSNorm).
`bnc.reference` holds readable float64 NumPy twins of the kernels' ops;
`bnc.distributed` synchronizes batch norm across processes over MPI.
"""
from bnc._core import c_version as _c_version
from bnc.batchnorm import (
    BatchNormSaved,
    Grads,
    ResidualGrads,
    batch_norm,
    batch_norm_backward,
    batch_norm_backward_elemt,
    batch_norm_backward_reduce,
    batch_norm_forward,
    batch_norm_stats,
    combine_stats,
    update_running_stats,
)
from bnc.batchrenorm import (
    BatchRenormSaved,
    batch_renorm,
    batch_renorm_backward,
    batch_renorm_forward,
)
from bnc import compat
from bnc.embedding import extension_kwargs, get_include, get_library_dir
from bnc.fold import Folded, fold_batch_norm
from bnc.groupnorm import (
    GroupNormSaved,
    group_norm,
    group_norm_backward,
    group_norm_forward,
)
from bnc.instancenorm import (
    InstanceNormSaved,
    instance_norm,
    instance_norm_backward,
    instance_norm_forward,
)
from bnc.layernorm import (
    LayerNormSaved,
    RMSNormSaved,
    layer_norm,
    layer_norm_backward,
    layer_norm_forward,
    rms_norm,
    rms_norm_backward,
    rms_norm_forward,
)
from bnc import distributed  # noqa: E402 (imports mpi4py only when used)
from bnc.threads import get_num_threads, num_threads, openmp_enabled, set_num_threads
from bnc._core import output_like, set_output_cache
from bnc import layers  # noqa: E402  (built on the functions above)

__version__ = "0.1.0"
assert _c_version() == __version__, "bnc: the C core and the package disagree"

__all__ = [
    "BatchNormSaved",
    "Grads",
    "ResidualGrads",
    "batch_norm",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_backward_reduce",
    "batch_norm_backward_elemt",
    "batch_norm_stats",
    "combine_stats",
    "update_running_stats",
    "BatchRenormSaved",
    "batch_renorm",
    "batch_renorm_forward",
    "batch_renorm_backward",
    "LayerNormSaved",
    "RMSNormSaved",
    "layer_norm",
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_forward",
    "rms_norm_backward",
    "GroupNormSaved",
    "group_norm",
    "group_norm_forward",
    "group_norm_backward",
    "InstanceNormSaved",
    "instance_norm",
    "instance_norm_forward",
    "instance_norm_backward",
    "Folded",
    "fold_batch_norm",
    "get_num_threads",
    "set_num_threads",
    "num_threads",
    "openmp_enabled",
    "set_output_cache",
    "output_like",
    "get_include",
    "get_library_dir",
    "extension_kwargs",
    "compat",
    "layers",
    "__version__",
]

