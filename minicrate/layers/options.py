"""The switches of a CRATE layer, written once and shared by every model's configuration.

:class:`LayerOptions` holds the six fields that choose between the official
code's layer and the paper's (η, λ, a tied or untied MSSA output, the softmax
temperature, LayerNorm or not, and LayerNorm's ε).  The classifier's, the
language model's and CRATE-MAE's configurations inherit them, so each field
is declared, defaulted and validated in this one place, and the keyword
dictionaries handed to the encoder and decoder layers are built here.

The fields are keyword-only: a configuration's own fields keep their
positions (``CRATEConfig(8, 4, ...)`` still starts with the image size).
"""

from __future__ import annotations

import dataclasses

from minicrate.core.validate import check_config_fields


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerOptions:
    """Layer switches (official-code defaults; the paper form is
    ``tie_out=True, attn_scale=1.0, use_layernorm=False``).

    Attributes:
        eta, lam: ISTA step size η and sparsity weight λ (both >= 0).
        tie_out: MSSA's output is the tied ``[U_1 … U_K]`` instead of ``W_out, b_out``.
        attn_scale: softmax temperature s; ``None`` means the official 1/√p.
        use_layernorm: LayerNorm before MSSA and before ISTA.
        ln_eps: LayerNorm's ε (> 0).
    """

    eta: float = 0.1
    lam: float = 0.1
    tie_out: bool = False
    attn_scale: float | None = None
    use_layernorm: bool = True
    ln_eps: float = 1e-5

    def __post_init__(self):
        check_config_fields(
            self,
            nonneg=(("eta", "lam"),),
            positive=("ln_eps", "attn_scale"),
            optional=("attn_scale",),
            bools=("tie_out", "use_layernorm"),
            dtypes=None,
        )

    def layer_options(self, *, causal=False) -> dict:
        """Keyword switches of :func:`minicrate.layers.encoder.encoder_layer_forward`."""
        options = {"scale": self.attn_scale, "tie_out": self.tie_out, "use_layernorm": self.use_layernorm,
                   "eta": self.eta, "lam": self.lam, "ln_eps": self.ln_eps}
        if causal:
            options["causal"] = True
        return options

    def decoder_options(self) -> dict:
        """Keyword switches of :func:`minicrate.layers.decoder.decoder_layer_forward` (no ISTA)."""
        return {"scale": self.attn_scale, "tie_out": self.tie_out, "use_layernorm": self.use_layernorm,
                "ln_eps": self.ln_eps}
