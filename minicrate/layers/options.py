"""The switches of a CRATE layer, written once and shared by every model's configuration.

:class:`LayerOptions` holds the fields that choose between the official
code's layer and the paper's (η, λ, a tied or untied MSSA output, the softmax
temperature, LayerNorm or not, and LayerNorm's ε), the head width p and the
release's single-head form (no output map), and the block itself: CRATE's
encoder layer or the standard transformer block it is compared with
(``block="transformer"``, :mod:`minicrate.layers.transformer`, whose MLP width is
``mlp_ratio``).  The classifier's, the language model's and CRATE-MAE's
configurations inherit them, so each field is declared, defaulted and validated
in this one place, and the keyword dictionaries handed to the layers are built
here.  Every default is the one before these fields existed, so old
configurations and checkpoints (which lack the fields) read as CRATE.

The fields are keyword-only: a configuration's own fields keep their
positions (``CRATEConfig(8, 4, ...)`` still starts with the image size).
"""

from __future__ import annotations

import dataclasses
import numbers

from minicrate.core.validate import check_config_fields

BLOCKS = ("crate", "transformer")


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
        dim_head: the head width p (the released code's ``dim_head``); ``None`` means
            ``dim // heads``, the only choice before this field existed.
        project_out: ``False`` drops the attention's output map (``W_out, b_out``), as the
            released code does when ``heads == 1`` and ``dim_head == dim``; needs
            ``heads·p = dim``.
        block: ``"crate"`` (MSSA + ISTA, :mod:`minicrate.layers.encoder`) or
            ``"transformer"`` (attention + MLP, :mod:`minicrate.layers.transformer`);
            ``eta, lam`` do not apply to the transformer, ``tie_out`` and
            ``use_layernorm=False`` are CRATE's only.
        mlp_ratio: the transformer's MLP hidden width is ``mlp_ratio·dim``, rounded (4 in ViT).

    A configuration that inherits these has ``dim`` and ``heads`` fields.
    """

    eta: float = 0.1
    lam: float = 0.1
    tie_out: bool = False
    attn_scale: float | None = None
    use_layernorm: bool = True
    ln_eps: float = 1e-5
    dim_head: int | None = None
    project_out: bool = True
    block: str = "crate"
    mlp_ratio: float = 4.0

    def __post_init__(self):
        check_config_fields(
            self,
            nonneg=(("eta", "lam"),),
            positive=("ln_eps", "attn_scale", "mlp_ratio"),
            optional=("attn_scale",),
            bools=("tie_out", "use_layernorm", "project_out"),
            choices={"block": BLOCKS},
            dtypes=None,
        )
        cls = type(self).__name__
        if self.dim_head is not None:
            if isinstance(self.dim_head, bool) or not isinstance(self.dim_head, numbers.Integral):
                raise TypeError(f"{cls}.dim_head must be a positive integer or None, got {self.dim_head!r}")
            if self.dim_head < 1:
                raise ValueError(f"{cls}.dim_head must be a positive integer or None, got {self.dim_head!r}")
        if self.block == "transformer" and (self.tie_out or not self.use_layernorm):
            raise ValueError(f"{cls}: tie_out=True and use_layernorm=False are CRATE's switches; the "
                             f"transformer block has a learned output map and pre-LayerNorm, got "
                             f"tie_out={self.tie_out}, use_layernorm={self.use_layernorm}")
        if not self.project_out and self.tie_out:
            raise ValueError(f"{cls}: project_out=False (no output map) and tie_out=True (output tied to U) "
                             "exclude each other")

    def check_heads(self, dim, heads):
        """Check the head layout against the model width (called by the configurations)."""
        cls = type(self).__name__
        if self.dim_head is None and dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads} (p = dim/heads), or set dim_head")
        if not self.project_out and heads * self.head_width(dim, heads) != dim:
            raise ValueError(f"{cls}: project_out=False needs heads·p = dim, got heads={heads}, "
                             f"p={self.head_width(dim, heads)}, dim={dim}")
        if self.block == "transformer" and self.mlp_hidden(dim) < 1:
            raise ValueError(f"{cls}.mlp_ratio {self.mlp_ratio} gives no MLP unit at dim {dim}")

    def head_width(self, dim, heads) -> int:
        """The head width p: ``dim_head``, or ``dim // heads`` when it is ``None``."""
        return self.dim_head if self.dim_head is not None else dim // heads

    def mlp_hidden(self, dim) -> int:
        """The transformer's MLP hidden width, ``mlp_ratio·dim`` rounded to an integer (timm truncates;
        rounding keeps ``mlp_ratio = h/dim`` giving back ``h`` despite floating point)."""
        return round(self.mlp_ratio * dim)

    def layer_options(self, *, causal=False) -> dict:
        """Keyword switches of the encoder stack's layer: those of
        :func:`minicrate.layers.encoder.encoder_layer_forward` for CRATE; for the
        transformer ``block``, ``heads``, ``scale`` and ``ln_eps``
        (:func:`minicrate.layers.transformer.transformer_block_forward`)."""
        if self.block == "transformer":
            options = {"block": "transformer", "heads": self.heads, "scale": self.attn_scale, "ln_eps": self.ln_eps}
        else:
            options = {"scale": self.attn_scale, "tie_out": self.tie_out, "use_layernorm": self.use_layernorm,
                       "eta": self.eta, "lam": self.lam, "ln_eps": self.ln_eps}
            if not self.project_out:
                options["project_out"] = False
        if causal:
            options["causal"] = True
        return options

    def decoder_options(self) -> dict:
        """Keyword switches of :func:`minicrate.layers.decoder.decoder_layer_forward` (no ISTA)."""
        options = {"scale": self.attn_scale, "tie_out": self.tie_out, "use_layernorm": self.use_layernorm,
                   "ln_eps": self.ln_eps}
        if not self.project_out:
            options["project_out"] = False
        return options
