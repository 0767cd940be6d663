"""minicrate: CRATE, the white-box transformer, from scratch with hand-derived gradients.

Tokens are rows: arrays of tokens have shape ``(..., N, d)``.  Every function
takes arrays of any array-API backend (NumPy, CuPy, torch, array_api_strict)
and computes in that backend.  Each block is a pure pair
``*_forward(...) -> (out, cache)`` / ``*_backward(dout, cache) -> (dinput, grads)``.
"""

__version__ = "0.1.0"

# First, before NumPy: a Ctrl-C while the command line is still importing is one line.
from minicrate.core.startup import quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting()

from minicrate.core.backend import cupy_available, get_backend, to_numpy
from minicrate.checks.gradcheck import check_vjp, numerical_vjp, rel_error
from minicrate.objective.rates import (
    coding_rate,
    coding_rate_grad,
    compression_rate,
    compression_rate_grad,
    measured_compression_rate,
    nonzero_fraction,
    rate_reduction,
    sparse_rate_reduction,
)
from minicrate.ops.functional import linear_backward, linear_forward, relu, softmax, softmax_backward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward
from minicrate.layers.mssa import mssa_backward, mssa_forward, mssa_step
from minicrate.layers.ista import ista_backward, ista_forward, lasso_objective
# The standard transformer's blocks, built the same way, to compare CRATE with (issue 17).
from minicrate.ops.gelu import gelu, gelu_backward
from minicrate.layers.attention import attention_backward, attention_forward
from minicrate.layers.mlp import mlp_backward, mlp_forward
from minicrate.models.embedding import (
    add_cls_pos_backward,
    add_cls_pos_forward,
    patch_embed_backward,
    patch_embed_forward,
    patchify,
    unpatchify,
)
from minicrate.models.loss import cross_entropy_backward, cross_entropy_forward
from minicrate.layers.encoder import encoder_layer_backward, encoder_layer_forward
from minicrate.layers.transformer import transformer_block_backward, transformer_block_forward
from minicrate.models.classifier import (
    PRESETS,
    CRATEConfig,
    backward,
    forward,
    init_params,
    intermediates,
    load,
    loss_and_grads,
    param_count,
    predict,
    preset,
    save,
)
from minicrate.layers.decoder import (
    DECODER_KEYS,
    decoder_layer_backward,
    decoder_layer_forward,
    decoder_layer_params,
)
from minicrate.measure.roundtrip import mssa_roundtrip, synthesize
# Character-level language models on Shakespeare (minicrate.models.lm, minicrate.data.text; issue 10).
from minicrate.models import lm
from minicrate.data import text
from minicrate.models.lm import LMConfig
from minicrate.data.text import Vocab, load_corpus
from minicrate.training.optim import SGD, AdamW, Lion, clip_by_global_norm, make_optimizer
from minicrate.training.schedule import warmup_cosine
from minicrate.training.classifier import TrainConfig, TrainingDiverged, TrainingInterrupted, recipe
from minicrate.measure.layerwise import layerwise, layerwise_comparison
# CRATE-MAE: masked autoencoder with the inverse decoder (minicrate.models.mae; issue 5).
from minicrate.layers import decoder
from minicrate.models import mae
from minicrate.models.mae import (
    MAE_PRESETS,
    MAEConfig,
    init_mae_params,
    mae_backward,
    mae_forward,
    mae_loss_and_grads,
    mae_preset,
)
from minicrate.models.loss import masked_mse_backward, masked_mse_forward
from minicrate.models.masking import random_masking
from minicrate.training.mae import mae_recipe, train_mae
from minicrate.ops.normalize import (
    l2_normalize_backward,
    l2_normalize_forward,
    weight_norm_backward,
    weight_norm_forward,
)
from minicrate.models.selfsup import SelfSupConfig, selfsup_backward, selfsup_forward
from minicrate.models.selfsup_loss import (
    dino_loss_backward,
    dino_loss_forward,
    simdino_loss_backward,
    simdino_loss_forward,
)
from minicrate.measure.knn import collapse_report, knn_accuracy
from minicrate.training.dino import SelfSupRecipe, selfsup_recipe, train_dino
