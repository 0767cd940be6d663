"""minicrate: CRATE, the white-box transformer, from scratch with hand-derived gradients.

Tokens are rows: arrays of tokens have shape ``(..., N, d)``.  Every function
takes arrays of any array-API backend (NumPy, CuPy, torch, array_api_strict)
and computes in that backend.  Each block is a pure pair
``*_forward(...) -> (out, cache)`` / ``*_backward(dout, cache) -> (dinput, grads)``.
"""

__version__ = "0.1.0"

from .backend import cupy_available, get_backend, to_numpy
from .gradcheck import check_vjp, numerical_vjp, rel_error
from .rates import (
    coding_rate,
    coding_rate_grad,
    compression_rate,
    compression_rate_grad,
    measured_compression_rate,
    nonzero_fraction,
    rate_reduction,
    sparse_rate_reduction,
)
from .functional import linear_backward, linear_forward, relu, softmax, softmax_backward
from .layernorm import layernorm_backward, layernorm_forward
from .mssa import mssa_backward, mssa_forward
from .ista import ista_backward, ista_forward, lasso_objective
from .embedding import (
    add_cls_pos_backward,
    add_cls_pos_forward,
    patch_embed_backward,
    patch_embed_forward,
    patchify,
    unpatchify,
)
from .loss import cross_entropy_backward, cross_entropy_forward
from .encoder import encoder_layer_backward, encoder_layer_forward
from .model import (
    PRESETS,
    CRATEConfig,
    backward,
    forward,
    init_params,
    intermediates,
    load,
    loss_and_grads,
    param_count,
    preset,
    save,
)
from .decoder import (
    DECODER_KEYS,
    decoder_layer_backward,
    decoder_layer_forward,
    decoder_layer_params,
    mssa_roundtrip,
    synthesize,
)
# Character-level language models on Shakespeare (minicrate.lm, minicrate.text; issue 10).
from . import lm, text
from .lm import LMConfig
from .text import Vocab, load_corpus
from .optim import SGD, AdamW, Lion, clip_by_global_norm, make_optimizer
from .schedule import warmup_cosine
from .train import TrainConfig, TrainingDiverged, TrainingInterrupted, recipe
from .measure import layerwise, layerwise_comparison
# CRATE-MAE: masked autoencoder with the inverse decoder (minicrate.mae; issue 5).
from . import decoder, mae
from .mae import (
    MAE_PRESETS,
    MAEConfig,
    init_mae_params,
    mae_backward,
    mae_forward,
    mae_loss_and_grads,
    mae_preset,
    mae_recipe,
    masked_mse_backward,
    masked_mse_forward,
    random_masking,
    train_mae,
)
