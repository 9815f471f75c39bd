"""`python -m ssl_jax.evaluate --eval=zeroshot,retrieval` on an image-text run (CLIP, SigLIP, SLIP, LiT).

Both read the run's tokenizer (`config.text.tokenizer`, else WORKDIR/tokenizer.model written by training)
and the method's `embed_images` / `embed_texts` of its evaluation variables (`methods/image_text.py`).
"""
from __future__ import annotations

import jax
import numpy as np

from ssl_jax.errors import UserError
from ssl_jax.text import tokenizer as tokenizer_lib


def embed(fn, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """fn (jitted) over `inputs` [N, ...] in batches of batch_size (the last one padded) -> [N, D] float32."""
    jitted = jax.jit(fn)
    out = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk), axis=0)])
        out.append(np.asarray(jitted(padded))[:len(chunk)])
    return np.concatenate(out).astype(np.float32)


def _setup(frozen):
    method = frozen.run.method
    if not hasattr(method, "embed_texts"):
        raise UserError(f"zeroshot and retrieval need an image-text method (clip, siglip, slip, lit); this run's "
                        f"method is {frozen.config.method.name!r}")
    tokenizer = tokenizer_lib.for_run(frozen.config.text, frozen.workdir)
    embed_batches = lambda fn, x: embed(fn, x, frozen.config.eval.batch_size)  # noqa: E731
    return method, method.eval_variables(frozen.state), tokenizer, embed_batches


def run_zero_shot(frozen, protocol) -> dict:
    from ssl_jax.eval.zero_shot import evaluate_zero_shot

    del protocol
    return evaluate_zero_shot(frozen.config, *_setup(frozen))


def run_retrieval(frozen, protocol) -> dict:
    from ssl_jax.eval.retrieval import evaluate_retrieval

    del protocol
    return evaluate_retrieval(frozen.config, *_setup(frozen))
