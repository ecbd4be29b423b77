"""Prompt debiasing (Hong et al. 2023, "Debiasing scores and prompts of 2D diffusion for view-
consistent text-to-3D"), as threestudio's ``prompt_debiasing``.

Some words of a prompt imply a view ("a smiling dog" implies its face, i.e. the front): kept in
the back-view prompt they pull a face onto the back. A masked language model scores how likely
each view word is in "This image is depicting a [MASK] view of <prompt>"; word i is dropped
from the prompt of view v when its pointwise mutual information with v is low:

    p(v | prompt) / lerp(p(v | prompt without word i), p(v | prompt), 0.5)  <  0.95.

The language model (a BERT-style ``AutoModelForMaskedLM`` folder, ``bert-base-uncased`` in
threestudio) is used once, when the prompt processor is built, then freed.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from scorestudio.priors.loading import load_component
from scorestudio.utils.config import ConfigError

TEMPLATE = "This image is depicting a [MASK] view of {}"
PMI_THRESHOLD = 0.95


class ViewScorer:
    """p(view | prompt) ``[V]`` from a masked language model, for the view words ``views``."""

    def __init__(self, source: str, views: Sequence[str], key: str, local_files_only: bool = True) -> None:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.tokenizer = load_component(AutoTokenizer, source, "", key=key, local_files_only=local_files_only)
        self.model = load_component(AutoModelForMaskedLM, source, "", key=key,
                                    local_files_only=local_files_only, dtype=torch.float32).eval()
        self.view_ids = [self.single_token(view, source, key) for view in views]

    def single_token(self, word: str, source: str, key: str) -> int:
        """The vocabulary id of ``word``; it must be one token for its probability to be read."""
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise ConfigError(f"{key}={source}: the view word {word!r} is {len(ids)} tokens in this tokenizer; "
                              "prompt debiasing needs a masked language model whose vocabulary has every view word")
        return int(ids[0])

    @torch.no_grad()
    def __call__(self, prompt: str) -> Tensor:
        tokens = self.tokenizer(TEMPLATE.format(prompt), return_tensors="pt")
        mask = (tokens.input_ids[0] == self.tokenizer.mask_token_id).nonzero()[0, 0]
        probs = torch.softmax(self.model(**tokens).logits[0, mask].float(), dim=-1)[self.view_ids]
        return probs / probs.sum()


def debiased_prompts(prompt: str, scorer: Any, n_views: int, mask_ids: Optional[Sequence[int]] = None,
                     threshold: float = PMI_THRESHOLD) -> list[str]:
    """One prompt per view: ``prompt`` without the words (indices ``mask_ids`` of the
    space-split prompt; None = every word) whose PMI with that view is below ``threshold``.

    ``scorer(prompt)`` → p(view | prompt) ``[n_views]``.
    """
    words = prompt.split(" ")
    kept = [list(words) for _ in range(n_views)]
    full = scorer(prompt)
    for i in (range(len(words)) if mask_ids is None else mask_ids):
        if not 0 <= i < len(words):
            raise ConfigError(f"prompt_debiasing_mask_ids: index {i} is outside the {len(words)} words of {prompt!r}")
        partial = scorer(" ".join(words[:i] + words[i + 1:]))
        pmi = full / torch.lerp(partial, full, 0.5)
        for view in range(n_views):
            if float(pmi[view]) < threshold:
                kept[view][i] = ""
    return [" ".join(w for w in view_words if w) for view_words in kept]
