"""Reading one layer's (or one part's) entries out of a model's flat parameter dict.

Every model (:mod:`minicrate.models.classifier`, :mod:`minicrate.models.lm`,
:mod:`minicrate.models.mae`) stores its encoder layers under ``layers.<i>.*``, keyed
like :mod:`minicrate.layers.encoder` once the prefix is removed.
"""

from __future__ import annotations

from minicrate.core.validate import check_int, check_keys


def layer_params(params, layer):
    """The ``layers.<layer>.*`` entries as a dict keyed like :mod:`minicrate.layers.encoder`."""
    check_keys(params, ())
    layer = check_int(layer, "layer", minimum=0)
    prefix = f"layers.{layer}."
    out = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"params holds no layer {layer} (no key starts with {prefix!r})")
    return out


def group(params, prefix):
    """The entries whose key starts with ``prefix``, with the prefix removed (``embed.W`` -> ``W``)."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
