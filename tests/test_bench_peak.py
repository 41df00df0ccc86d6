"""bench/lib/peak.py: the machine's peak per precision and a forward pass's arithmetic, on made-up CPUs and the
real models' configs (the figures the benchmarks divide by)."""

import pytest

from bench.lib.peak import Cpu, decoder_flops, encoder_flops, ops_per_cycle, peak, row_precision, share_of_peak

ZEN4 = Cpu("AMD EPYC 9R14 96-Core Processor", frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}),
           2, 3.7)  # fmt: skip
ROME = Cpu("AMD EPYC 7R32", frozenset({"avx2", "fma"}), 2, 3.3)
SAPPHIRE = Cpu("Intel(R) Xeon(R) Platinum 8488C", frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                                                            "amx_bf16", "amx_int8", "amx_tile"}), 2, 3.8)  # fmt: skip
BGE_BASE = {"num_hidden_layers": 12, "hidden_size": 768, "intermediate_size": 3072}
QWEN3_06B = {"num_hidden_layers": 28, "hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128}  # fmt: skip


@pytest.mark.parametrize(
    "cpu, precision, per_cycle",
    [
        (ZEN4, "fp32", 32), (ZEN4, "bf16", 64), (ZEN4, "int8", 128),
        (ROME, "fp32", 32), (ROME, "bf16", 32), (ROME, "int8", 64),
        (SAPPHIRE, "fp32", 64), (SAPPHIRE, "bf16", 1024), (SAPPHIRE, "int8", 2048),
    ],
)  # fmt: skip
def test_operations_per_cycle_follow_the_cpus_instructions(cpu, precision, per_cycle):
    assert ops_per_cycle(cpu, precision)[0] == per_cycle


def test_peak_is_cores_times_clock_times_operations_per_cycle():
    assert peak(ZEN4, "fp32")["ops_per_s"] == pytest.approx(2 * 3.7e9 * 32)
    assert share_of_peak(1e9, 10, ZEN4, "fp32") == pytest.approx(1e10 / (2 * 3.7e9 * 32))
    assert share_of_peak(1e9, 10, Cpu("x", frozenset(), 2, 0.0), "fp32") is None  # no clock known


def test_forward_pass_arithmetic_is_twice_the_products_weights_per_token_plus_attention():
    # bge-reranker-base: 12 layers x (4 h^2 + 2 h f) = 85M weights in matrix products, 2 FLOPs per weight and token
    assert encoder_flops(BGE_BASE, 128) == 12 * (2 * 128 * 7_077_888 + 4 * 128 * 128 * 768)
    # Qwen3-0.6B: 440M weights in its layers' products (grouped-query attention), ~0.88 GFLOP per token
    assert decoder_flops(QWEN3_06B, 1) == pytest.approx(28 * (2 * 15_728_640 + 4 * 16 * 128))
    assert decoder_flops(QWEN3_06B, 1) == pytest.approx(0.88e9, rel=0.01)


def test_a_rows_precision_is_read_from_its_name():
    assert row_precision("rerankrt int8 mixed (openvino)") == "int8"
    assert row_precision("rerankrt bf16 (torch)") == "bf16"
    assert row_precision("sentence-transformers CrossEncoder fp32 (baseline)") == "fp32"


def test_a_prefix_reuse_row_counts_the_cards_work_and_what_it_computes():
    from bench.prefix_reuse import add_peak_shares

    card, reuse = "model card (transformers fp32)", "rerankrt bf16 openvino, prefix reuse"
    results = {"typical": {"prompt_tokens_mean": 300.0, "shared_prefix_tokens": 100,
                           "rows": {card: {"pairs_per_s": 1.0}, reuse: {"pairs_per_s": 4.0}}}}  # fmt: skip
    add_peak_shares(results, QWEN3_06B, {"fp32": 1e11, "bf16": 2e11})
    rows = results["typical"]["rows"]
    whole = decoder_flops(QWEN3_06B, 300)
    assert rows[card]["share_of_measured_ceiling"] == pytest.approx(whole / 1e11)
    assert rows[card]["computed_share_of_measured_ceiling"] == rows[card]["share_of_measured_ceiling"]
    assert rows[reuse]["share_of_measured_ceiling"] == pytest.approx(4 * whole / 2e11)  # the card's work, bf16
    computed = rows[reuse]["computed_share_of_measured_ceiling"] * 2e11 / 4  # FLOPs per pair it computed
    assert computed == pytest.approx(200 / 300 * whole)  # the 200 suffix tokens, each attending to all 300
