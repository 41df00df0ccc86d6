"""The Reranker's Python face: `logits` and `rerank` over the in-memory model, and the old names that keep working
(`Reranker.score`, `EngineSettings`, `rerankrt.runtime.engine`)."""

import numpy as np

from rerankrt.runtime import Reranker, sigmoid
from tests.fakes import BEST_FIRST, DOCS, LOGITS, QUERY, make_model, settings


def test_logits_are_raw_and_rerank_gives_their_sigmoid_best_first():
    with Reranker(make_model(), settings()) as reranker:
        np.testing.assert_array_equal(reranker.logits(QUERY, DOCS), np.float32(LOGITS))
        ranked = reranker.rerank(QUERY, DOCS)
    assert [r.index for r in ranked] == BEST_FIRST
    np.testing.assert_allclose([r.score for r in ranked], sigmoid(np.float32(LOGITS))[BEST_FIRST], rtol=0)


def test_score_is_the_old_name_of_logits():
    with Reranker(make_model(), settings()) as reranker:
        np.testing.assert_array_equal(reranker.score(QUERY, DOCS), reranker.logits(QUERY, DOCS))


def test_the_old_import_names_keep_working():
    import rerankrt
    import rerankrt.runtime.engine
    import rerankrt.runtime.reranker
    from rerankrt.runtime.engine import Reranker as OldReranker

    assert rerankrt.EngineSettings is rerankrt.RerankerSettings is rerankrt.runtime.RerankerSettings
    assert rerankrt.runtime.engine is rerankrt.runtime.reranker and OldReranker is Reranker
