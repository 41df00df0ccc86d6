"""Qwen3-VL yes/no reranker: detection, prompt, numpy preprocessing vs transformers, and two-graph parity.

Parity is against the official scoring script's computation (rerankrt.testing.reference_qwen3_vl):
transformers' own forward on its own processor outputs, score = sigmoid((W[yes] - W[no]) · h_last).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rerankrt.errors import InputError
from rerankrt.families import Qwen3VLFamily, detect_family
from rerankrt.families.qwen3_vl.encoder import normalize_content
from rerankrt.families.qwen3_vl.geometry import (
    VisionGeometry,
    position_embedding_lookup,
    rope_positions,
    rotary_cos_sin,
)
from rerankrt.families.qwen3_vl.media import MediaConfig, preprocess_image, preprocess_video, smart_resize
from rerankrt.testing.reference_qwen3_vl import messages

SCORE_TOLERANCE = 1e-3  # |Δ sigmoid score|, the acceptance bound
LOGIT_TOLERANCE = 1e-4  # |Δ logit|, what fp32 graphs actually hold (~3e-6 measured)


@pytest.fixture(scope="module")
def model(qwen3_vl_dir):
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration.from_pretrained(qwen3_vl_dir).eval()


def image(rng, height, width):
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def frames(rng, count, height, width):
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def as_side(content) -> dict:
    """Content parts -> the official script's {text, image, video} lists."""
    if isinstance(content, str):
        return {"text": [content]} if content else {}
    side = {"text": [], "image": [], "video": []}
    for part in content:
        if part["type"] == "text":
            side["text"].append(part["text"])
        elif part["type"] == "image":
            side["image"].append(part["image"])
        else:
            side["video"].append((part["video"], part["fps"]))
    return side


def cases():
    rng = np.random.default_rng(7)
    img_a, img_b, img_c = image(rng, 64, 96), image(rng, 300, 200), image(rng, 40, 50)
    video = frames(rng, 3, 70, 90)
    txt = lambda s: {"type": "text", "text": s}  # noqa: E731
    img = lambda i: {"type": "image", "image": i}  # noqa: E731
    return {
        "text-only": ("what is panda?", ["The giant panda is a bear species endemic to China.", "hi", ""]),
        "one-image": ("what is panda?", [[img(img_a), txt("a bear")]]),
        "images-of-different-sizes": ("panda", [[txt("three"), img(img_a), img(img_b), img(img_c)]]),
        "image-in-query": ([img(img_b), txt("find this")], ["Berlin is the capital of Germany.", [img(img_a)]]),
        "video": ("a short video", [[{"type": "video", "video": video, "fps": 2.0}, txt("frames of a panda")]]),
        "mixed-batch": (
            "panda",
            [
                "Paris is the capital and largest city of France.",
                [img(img_c)],
                [txt("two images"), img(img_a), img(img_b)],
                [{"type": "video", "video": video[:2], "fps": 1.0}, img(img_c), txt("both")],
                "",
            ],
        ),
    }


CASES = cases()


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
@pytest.mark.parametrize("case", list(CASES))
def test_scores_match_the_official_scoring(vl_rerankers, vl_official, backend, case):
    query, documents = CASES[case]
    expected_scores, expected_logits = vl_official.score([messages(as_side(query), as_side(d)) for d in documents])
    logits = vl_rerankers[backend].logits(query, documents)
    scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert np.abs(scores - expected_scores).max() <= SCORE_TOLERANCE
    assert np.abs(logits - expected_logits).max() <= LOGIT_TOLERANCE


@pytest.mark.integration
def test_token_ids_match_the_official_prompt(qwen3_vl_dir, vl_official):
    encoder = Qwen3VLFamily().load_encoder(qwen3_vl_dir)
    for query, documents in CASES.values():
        pairs = encoder.encode(query, documents)
        reference = vl_official.inputs([messages(as_side(query), as_side(d)) for d in documents])
        for pair, ids, mask in zip(pairs, reference["input_ids"], reference["attention_mask"], strict=True):
            assert pair["input_ids"].tolist() == ids[mask == 1].tolist()


@pytest.mark.integration
def test_detection_and_artifact(qwen3_vl_dir, qwen3_vl_artifact):
    assert isinstance(detect_family(qwen3_vl_dir)[0], Qwen3VLFamily)
    manifest = json.loads((qwen3_vl_artifact / "manifest.json").read_text())
    assert manifest["family"] == Qwen3VLFamily.name
    assert set(manifest["graphs"]) == {"vision", "scorer"}
    assert manifest["graphs"]["scorer"]["outputs"] == ["logits"]
    assert {"media_config.json", "reranker_template.jinja", "vision.onnx", "scorer.onnx"} <= set(manifest["files"])
    parity = json.loads((qwen3_vl_artifact / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= LOGIT_TOLERANCE


@pytest.mark.integration
def test_scorer_graph_has_no_vocabulary_projection(qwen3_vl_artifact, qwen3_vl_dir):
    import onnx

    vocab = json.loads((qwen3_vl_dir / "config.json").read_text())["text_config"]["vocab_size"]
    graph = onnx.load(str(qwen3_vl_artifact / "scorer.onnx")).graph
    matmul_inputs = {i for n in graph.node if n.op_type in ("MatMul", "Gemm") for i in n.input}
    weights = [onnx.numpy_helper.to_array(i).shape for i in graph.initializer if i.name in matmul_inputs]
    assert weights and not any(vocab in shape for shape in weights)


def test_template_renders_the_official_layout(tokenizer_dirs):
    encoder = Qwen3VLFamily().load_encoder(tokenizer_dirs["qwen3-vl"])
    rng = np.random.default_rng(0)
    query = normalize_content([{"type": "text", "text": "q"}, {"type": "image", "image": image(rng, 64, 64)}], "query")
    text, query_spans, doc_spans = encoder.prompt.render(query, normalize_content("", "documents[0]"), None)
    assert text == (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
        'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
        "<Instruct>: Given a search query, retrieve relevant candidates that answer the query."
        "<Query>:<|vision_start|><|image_pad|><|vision_end|>q\n<Document>:NULL<|im_end|>\n<|im_start|>assistant\n"
    )
    assert [text[slice(*s)] for s in query_spans + doc_spans] == ["q", "NULL"]
    custom, _, _ = encoder.prompt.render(query, normalize_content("d", "d"), "Find images.")
    assert "<Instruct>: Find images.<Query>:" in custom


def test_parts_are_ordered_videos_images_texts():
    video = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    parts = normalize_content(
        [{"type": "text", "text": "a"}, {"type": "image", "image": "I"}, {"type": "video", "video": video, "fps": 1}],
        "query",
    )
    assert [p["type"] for p in parts] == ["video", "image", "text"]
    with pytest.raises(InputError, match=r"query\[0\]"):
        normalize_content([{"type": "audio"}], "query")


def test_truncation_keeps_media_and_template(tokenizer_dirs):
    encoder = Qwen3VLFamily().load_encoder(tokenizer_dirs["qwen3-vl"], max_length=160)
    rng = np.random.default_rng(1)
    long_doc = [{"type": "image", "image": image(rng, 64, 96)}, {"type": "text", "text": "panda " * 400}]
    (pair,) = encoder.encode("what is panda?", [long_doc])
    ids = pair["input_ids"].tolist()
    assert len(ids) == 160
    assert ids.count(encoder.image_pad) == 4 * 6 // 4
    assert encoder.tokenizer.decode(ids[-5:]) == "<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(InputError, match=r"documents\[0\]"):
        encoder.encode("q", [long_doc], truncate=False)
    with pytest.raises(InputError, match=r"documents\[0\]"):  # media alone over the limit
        big = [{"type": "image", "image": image(rng, 160, 160)}]
        Qwen3VLFamily().load_encoder(tokenizer_dirs["qwen3-vl"], max_length=100).encode("q", [big])


def test_smart_resize_follows_the_reranker_bounds():
    defaults = MediaConfig()
    assert smart_resize(512, 512, 32, defaults.image_min_pixels, defaults.image_max_pixels) == (512, 512)
    assert smart_resize(10, 20, 32, defaults.image_min_pixels, defaults.image_max_pixels) == (64, 96)
    h, w = smart_resize(3000, 4000, 32, defaults.image_min_pixels, defaults.image_max_pixels)
    assert h % 32 == w % 32 == 0 and h * w <= defaults.image_max_pixels and abs(w / h - 4 / 3) < 0.02
    with pytest.raises(ValueError):
        smart_resize(1, 500, 32, 4096, 10**6)


def test_pixels_match_the_transformers_processor(tokenizer_dirs):
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor.from_pretrained(tokenizer_dirs["qwen3-vl"])
    config = MediaConfig.load(tokenizer_dirs["qwen3-vl"])
    rng = np.random.default_rng(2)
    for height, width in [(64, 96), (300, 200), (20, 33)]:  # as is, downscaled, upscaled
        source = image(rng, height, width)
        item = preprocess_image(source, config)
        h, w = item.grid_thw[1] * 16, item.grid_thw[2] * 16
        resized = source.resize((w, h), Image.Resampling.BICUBIC)
        expected = processor(images=[resized], do_resize=False, return_tensors="np")
        np.testing.assert_array_equal(item.pixel_values, expected["pixel_values"])
        assert list(item.grid_thw) == expected["image_grid_thw"][0].tolist()
    clip = frames(rng, 3, 64, 80)
    video = preprocess_video(clip, 2.0, config)
    h, w = video.grid_thw[1] * 16, video.grid_thw[2] * 16
    resized = [Image.fromarray(f).resize((w, h), Image.Resampling.BICUBIC) for f in clip]
    expected = processor(images=None, videos=[resized], do_resize=False, return_tensors="np")
    np.testing.assert_array_equal(video.pixel_values, expected["pixel_values_videos"])
    assert list(video.grid_thw) == expected["video_grid_thw"][0].tolist() and video.grid_thw[0] == 2
    assert video.timestamps == (0.25, 1.0)  # frames at 0, 0.5, 1.0 s; the last one repeated


@pytest.mark.integration
def test_grid_inputs_match_the_vision_tower(model, qwen3_vl_dir):
    visual = model.model.visual
    geometry = VisionGeometry.from_config(json.loads((qwen3_vl_dir / "config.json").read_text())["vision_config"])
    for h, w in [(4, 6), (10, 8), (22, 26)]:
        grid = torch.tensor([[1, h, w]])
        index, weight = position_embedding_lookup(h, w, geometry)
        ours = (visual.pos_embed(torch.from_numpy(index)) * torch.from_numpy(weight)[..., None]).sum(0)
        torch.testing.assert_close(ours, visual.fast_pos_embed_interpolate(grid), atol=1e-6, rtol=0)
        cos, sin = rotary_cos_sin(h, w, geometry)
        rotary = visual.rot_pos_emb(grid)
        emb = torch.cat([rotary, rotary], dim=-1)
        torch.testing.assert_close(torch.from_numpy(cos), emb.cos(), atol=1e-6, rtol=0)
        torch.testing.assert_close(torch.from_numpy(sin), emb.sin(), atol=1e-6, rtol=0)


@pytest.mark.integration
def test_rope_positions_match_get_rope_index(model):
    config = model.config
    img, vid = config.image_token_id, config.video_token_id
    start, end = config.vision_start_token_id, config.vision_end_token_id
    # text, an image of 2x3 merged tokens, text, a video of two temporal patches of 2x2, text
    ids = [5, 6, start] + [img] * 6 + [end, 7, 8, start] + [vid] * 4 + [end, 9, start] + [vid] * 4 + [end, 10]
    ours = rope_positions(np.asarray(ids), {img, vid}, [(2, 3), (2, 2), (2, 2)])
    grids = torch.tensor([[1, 4, 6]]), torch.tensor([[2, 4, 4]])
    expected, _ = model.model.get_rope_index(torch.tensor([ids]), *grids, torch.ones(1, len(ids), dtype=torch.long))
    np.testing.assert_array_equal(ours, expected[:, 0].numpy())
