import numpy as np
import pytest

from rerankrt.runtime.batching import plan_batches


def test_every_pair_once_longest_first_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 400, size=200).tolist()
    batches = plan_batches(lengths, max_batch_size=16, max_batch_tokens=2048)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(200))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    for batch in batches:
        assert len(batch) <= 16
        assert len(batch) * max(lengths[i] for i in batch) <= 2048


def test_pair_longer_than_budget_gets_its_own_batch():
    batches = plan_batches([5000, 10, 10], max_batch_size=8, max_batch_tokens=1000)
    assert [b.tolist() for b in batches] == [[0], [1, 2]]


def test_equal_lengths_keep_arrival_order():
    batches = plan_batches([7, 7, 7, 7], max_batch_size=2, max_batch_tokens=100)
    assert [b.tolist() for b in batches] == [[0, 1], [2, 3]]


def test_padding_ratio_cap_keeps_dissimilar_lengths_apart():
    lengths = [100, 98, 60, 59, 10]
    capped = plan_batches(lengths, max_batch_size=8, max_batch_tokens=10_000, max_padding_ratio=0.05)
    assert [b.tolist() for b in capped] == [[0, 1], [2, 3], [4]]
    for batch in capped:
        longest = max(lengths[i] for i in batch)
        assert 1 - sum(lengths[i] for i in batch) / (len(batch) * longest) <= 0.05
    uncapped = plan_batches(lengths, max_batch_size=8, max_batch_tokens=10_000)
    assert [b.tolist() for b in uncapped] == [[0, 1, 2, 3, 4]]


@pytest.mark.integration
def test_in_process_scoring_batches_like_the_server_on_cpu(artifact_dirs):
    """Reranker.logits caps padding as the server's scheduler does on CPU (0.1), and scores the same either way."""
    from rerankrt.runtime import Reranker, RerankerSettings
    from rerankrt.runtime.batching import default_padding_ratio
    from rerankrt.runtime.loader import load_model

    settings = RerankerSettings(model_path=str(artifact_dirs["xlmr"]))
    model = load_model(settings)
    widths = []
    run = model.backend.run
    model.backend.run = lambda batch: widths.append(batch["input_ids"].shape) or run(batch)
    docs = ["panda " * n for n in (3, 80, 4, 120, 5, 60)]
    capped = Reranker(model, settings).logits("panda", docs)
    capped_batches, widths[:] = list(widths), []
    uncapped = Reranker(model, settings.model_copy(update={"max_padding_ratio": 1.0})).logits("panda", docs)
    assert default_padding_ratio("cpu") == 0.1 and default_padding_ratio("cuda") == 1.0
    assert len(capped_batches) > len(widths) == 1
    np.testing.assert_allclose(capped, uncapped, atol=1e-4)
