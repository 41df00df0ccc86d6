"""Qwen3-VL-Reranker scored as its official script does, with transformers only (no rerankrt graph code).

The script builds chat messages (system instruction; `<Instruct>: …`, `<Query>:` then the
query's videos, images, texts, `\\n<Document>:` then the document's; "NULL" for an empty
side), renders them with the chat template, resizes images itself (qwen-vl-utils'
smart_resize, bicubic) and calls the processor with `do_resize=False`, pads on the left,
runs `model.model(**inputs).last_hidden_state[:, -1]` through a Linear whose row is
W[yes] - W[no], and takes the sigmoid.

qwen-vl-utils and the Qwen3-VL processor need torchvision, which does not import here, so
the processor's two steps are reproduced from transformers 4.57: pixels from
`Qwen2VLImageProcessor` (the slow image processor; videos through its frame path), and the
placeholder expansion of `Qwen3VLProcessor.__call__` (an image pad -> h*w/4 pads; a video ->
`<t seconds><|vision_start|>pads<|vision_end|>` per temporal patch, t = mean frame time).
Only the resize target size comes from rerankrt (`smart_resize`), tested on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen3VLForConditionalGeneration

from rerankrt.families.qwen3_vl.media import MediaConfig, smart_resize, video_frame_size

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."


def side_content(side: dict, prefix: str) -> list[dict]:
    """The script's `format_mm_content`: prefix, then videos, images, texts; NULL when empty."""
    content = [{"type": "text", "text": prefix}]
    texts, images, videos = side.get("text", []), side.get("image", []), side.get("video", [])
    if not (texts or images or videos):
        return content + [{"type": "text", "text": "NULL"}]
    content += [{"type": "video", "video": frames, "fps": fps} for frames, fps in videos]
    content += [{"type": "image", "image": image} for image in images]
    content += [{"type": "text", "text": text} for text in texts]
    return content


def messages(query: dict, document: dict, instruction: str | None = None) -> list[dict]:
    contents = [{"type": "text", "text": "<Instruct>: " + (instruction or DEFAULT_INSTRUCTION)}]
    contents += side_content(query, "<Query>:") + side_content(document, "\n<Document>:")
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {"role": "user", "content": contents},
    ]


class OfficialScorer:
    def __init__(self, model_dir: Path, media: MediaConfig | None = None):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.processor = Qwen2VLImageProcessor.from_pretrained(model_dir)
        self.media = media or MediaConfig.load(model_dir)
        lm = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.model = lm.model
        yes, no = self.tokenizer.get_vocab()["yes"], self.tokenizer.get_vocab()["no"]
        self.row = lm.lm_head.weight[yes].detach() - lm.lm_head.weight[no].detach()
        self.merge = self.model.config.vision_config.spatial_merge_size

    def _image(self, image: Image.Image) -> Image.Image:
        m = self.media
        h, w = smart_resize(image.height, image.width, m.factor, m.image_min_pixels, m.image_max_pixels)
        return image.convert("RGB").resize((w, h), resample=Image.Resampling.BICUBIC)

    def _video(self, frames: np.ndarray) -> list[Image.Image]:
        h, w = video_frame_size(len(frames), frames.shape[1], frames.shape[2], self.media)
        return [Image.fromarray(f).resize((w, h), resample=Image.Resampling.BICUBIC) for f in frames]

    def inputs(self, pairs: list[list[dict]]) -> dict:
        texts, images, videos, fps = [], [], [], []
        for conversation in pairs:
            texts.append(self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True))
            for part in conversation[1]["content"]:
                if part["type"] == "image":
                    images.append(self._image(part["image"]))
                elif part["type"] == "video":
                    videos.append(self._video(part["video"]))
                    fps.append(part["fps"])
        out = {}
        if images:
            pix = self.processor(images=images, do_resize=False, return_tensors="pt")
            out["pixel_values"], out["image_grid_thw"] = pix["pixel_values"], pix["image_grid_thw"]
        if videos:
            pix = self.processor(images=None, videos=videos, do_resize=False, return_tensors="pt")
            out["pixel_values_videos"], out["video_grid_thw"] = pix["pixel_values_videos"], pix["video_grid_thw"]
        texts = self._expand(texts, out.get("image_grid_thw"), out.get("video_grid_thw"), videos, fps)
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        out.update(self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt"))
        return out

    def _expand(self, texts, image_grids, video_grids, videos, fps) -> list[str]:
        """transformers 4.57 `Qwen3VLProcessor.__call__`'s placeholder expansion."""
        unit = self.merge**2
        image_index = video_index = 0
        result = []
        for text in texts:
            while "<|image_pad|>" in text:
                n = int(image_grids[image_index].prod()) // unit
                text = text.replace("<|image_pad|>", "<|placeholder|>" * n, 1)
                image_index += 1
            text = text.replace("<|placeholder|>", "<|image_pad|>")
            video_token = "<|vision_start|><|video_pad|><|vision_end|>"
            while video_token in text:
                t, h, w = (int(x) for x in video_grids[video_index])
                indices = list(range(len(videos[video_index])))
                indices += [indices[-1]] * (-len(indices) % self.merge)
                stamps = [i / fps[video_index] for i in indices]
                stamps = [(stamps[i] + stamps[i + self.merge - 1]) / 2 for i in range(0, len(stamps), self.merge)]
                frame = "<|vision_start|>" + "<|placeholder|>" * (h * w // unit) + "<|vision_end|>"
                text = text.replace(video_token, "".join(f"<{stamps[k]:.1f} seconds>" + frame for k in range(t)), 1)
                video_index += 1
            result.append(text.replace("<|placeholder|>", "<|video_pad|>"))
        return result

    @torch.no_grad()
    def score(self, pairs: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
        """(sigmoid scores, logits) as the script computes them, in one padded batch."""
        hidden = self.model(**self.inputs(pairs)).last_hidden_state[:, -1]
        logits = hidden @ self.row
        return torch.sigmoid(logits).numpy(), logits.numpy()
