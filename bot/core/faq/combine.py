"""The combiner: per-entry signals → a probability-like score per entry.

    probs = SEMANTIC.probabilities(signals, sizes)   # signals (questions, entries, 5)

Each entry is scored by a weighted sum of its signals, and the sums go through a softmax over
the entries plus a constant "none of these" logit, so a score is a probability-like number in
[0, 1] whose level means the same across knowledge bases (the policy thresholds it). A
signal's weight depends on how many phrasings the entry has (best-phrasing similarity is
worth more for an entry with 100 phrasings than for one with 10; the entry mean, less):

    weight[i] = weights[i] + slopes[i] * log(clip(phrasings of the entry, *SIZE_RANGE) / 10)

clipped to the sizes the fit saw, so it never extrapolates.

The weights and the "none" logit are fitted by `python benchmarks/faq_matching.py --fit`:
every training phrasing of four knowledge bases (BANKING77 and HWU64, 10 phrasings per entry
and all of them) is held out once (5 folds) and ranked against a matcher built without it,
and the weights maximise the held-out softmax likelihood of the right entry (and of "none" for
phrasings of the *other* dataset, to give the constant logit a meaning). The benchmark's test
questions are never used. The signal set and the matcher's other hyper-parameters were
compared the same way (held-out top-1 moved by under half a point around the values kept; a
whitened top-3 signal and LR heads on other features added nothing and were dropped).

Also compared on the same held-out folds and left out (test top-1 BANKING77/HWU64, 10
phrasings per entry / all, within half a point of the kept set unless said): the LR head with
C = 3, 30 or 100 or more iterations; mean of the best 3 phrasing cosines; a soft kNN vote
(log-sum-exp of cosines); best phrasing cosine in the whitened space; per-entry standardised
best-phrasing and centroid cosines; word-dropout copies of the phrasings for the head (-1 to
-1.5 points); MiniLM's intermediate layers pooled beside the last (no gain); multinomial and
complement naive Bayes over the TF-IDF. An LR head on the TF-IDF (scikit-learn) added 0.5 and
1 point with all phrasings, nothing with 10, and needs scikit-learn or minutes of numpy per
fit; contrastive fine-tuning of MiniLM on the phrasings (in-batch negatives, 5-8 epochs, 3-8
min on 2 cores for 10 phrasings per entry, too long for all of them) took the combined top-1
with 10 phrasings from 0.861 to 0.872 (BANKING77) and 0.825 to 0.850 (HWU64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

SIZE_RANGE = (8.0, 160.0)


@dataclass(frozen=True)
class Combiner:
    """Signal weights (per-size slopes included) and the "none of these" logit."""

    signals: tuple[str, ...]
    weights: tuple[float, ...]
    slopes: tuple[float, ...]
    none: float

    def entry_weights(self, sizes: I64) -> F32:
        """(entries, signals) weights for entries with `sizes` phrasings."""
        size = np.log(np.clip(sizes, *SIZE_RANGE) / 10.0).astype(np.float32)
        return np.asarray(self.weights, np.float32) + size[:, None] * np.asarray(
            self.slopes, np.float32
        )

    def logits(self, signals: F32, sizes: I64) -> F32:
        """(questions, entries) logits from (questions, entries, signals)."""
        result: F32 = np.einsum("qes,es->qe", signals, self.entry_weights(sizes))
        return result

    def probabilities(self, signals: F32, sizes: I64) -> F32:
        """(questions, entries) scores: see `probabilities`."""
        return probabilities(self.logits(signals, sizes), self.none)


def probabilities(logits: F32, none_logit: float) -> F32:
    """Softmax over the entries plus a constant "none of these" logit (left out of the result,
    so a row sums to less than 1 when nothing matches well)."""
    top = np.maximum(logits.max(axis=1, keepdims=True), none_logit)
    exp = np.exp(logits - top)
    total = exp.sum(axis=1, keepdims=True) + np.exp(none_logit - top)
    result: F32 = (exp / total).astype(np.float32)
    return result


# With sentence embeddings: the semantic signals (bot.core.faq.semantic) and the lexical ones
# (`tfmax`: best phrasing TF-IDF cosine; `tfcen`: cosine to the entry's TF-IDF centroid).
SEMANTIC = Combiner(
    signals=("lr", "lda", "nn", "tfmax", "tfcen"),
    weights=(0.837, 5.509, 5.861, 1.618, 2.723),
    slopes=(0.098, -2.358, 0.042, 0.888, 0.328),
    none=2.963,
)
# Without: the lexical signals alone, with their own weights.
LEXICAL = Combiner(
    signals=("tfmax", "tfcen"),
    weights=(6.1, 18.485),
    slopes=(1.122, 0.137),
    none=5.752,
)

__all__ = ["LEXICAL", "SEMANTIC", "SIZE_RANGE", "Combiner", "probabilities"]
