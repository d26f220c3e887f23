"""The semantic-stylisation judge: answer parsing, the prompt, and the real load/generate path on a tiny
random-weight Qwen2.5-VL built offline (no hub)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sxbench.metrics.judge import (
    IMAGE_ORDER,
    INSTRUCTION,
    PROMPT_VERSION,
    QwenJudge,
    build_messages,
    parse_score,
    to_pil,
)

# The special tokens of Qwen2.5-VL's tokenizer, in the hub's id order (151643...151656 there, 256...269 here).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2.5-VL-Instruct's chat template (images as <|vision_start|><|image_pad|><|vision_end|>).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def write_tiny_qwen_vl(folder: Path, answer: str | None = None) -> Path:
    """Save a tiny random-weight Qwen2.5-VL (model, processor, generation config) into ``folder``; return it.
    With ``answer``, its text weights are wired so that greedy decoding answers exactly that (``_answer_with``).

    Tokenizer: byte-level BPE with no merges (the 256 byte symbols, one token per byte), built offline with
    ``tokenizers`` inside ``Qwen2Tokenizer``, plus Qwen2.5-VL's special tokens (ids 256-269); its ids are
    written into the model config (image/video/vision start/end tokens, bos/eos/pad). Image processor: the
    real ``Qwen2VLImageProcessor`` (patch 14, merge 2, temporal patch 2) limited to 56x56 pixels, so an image
    becomes a 4x4 patch grid and 4 placeholder tokens. Model: text hidden 32, 2 layers, 4 heads (head dim 8,
    mrope sections 2+1+1), vocab 288; vision hidden 32, depth 2 (block 1 full attention), window 56 px.
    """
    from tokenizers import pre_tokenizers
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2Tokenizer,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])  # adds <|endoftext|> (eos, pad) as id 256
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.eos_token = "<|im_end|>"  # as in the hub's Instruct tokenizer
    ids = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)))
    assert ids["<|endoftext|>"] == 256 and ids["<|video_pad|>"] == 269, ids

    vision = {"size": {"shortest_edge": 56 * 56, "longest_edge": 56 * 56}, "patch_size": 14,
              "temporal_patch_size": 2, "merge_size": 2}
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**vision), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(**vision), chat_template=CHAT_TEMPLATE)

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 288, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
            "max_window_layers": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56, "out_hidden_size": 32,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    # Like the hub's Instruct generation config: sampling switched on, which the judge must override.
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], do_sample=True, temperature=0.1, top_p=0.001,
        top_k=1, repetition_penalty=1.05,
    )
    if answer is not None:
        _answer_with(model, tokenizer, answer)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _answer_with(model: torch.nn.Module, tokenizer, answer: str) -> None:
    """Wire the text model so that greedy decoding after the prompt's last token (the ``\n`` of
    ``<|im_start|>assistant\n``) writes ``answer`` and then ``<|im_end|>``, whatever the images: every layer's
    output projections are zeroed (the residual stream at a position is then its token's embedding), each token
    of the chain is embedded as its own basis vector, and the LM head maps that vector to the chain's next token.
    The vision tower, processor, ``generate`` (with the judge's generation config), decoding and parsing stay real.
    """
    chain = tokenizer("\n" + answer)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    text = model.model.language_model
    assert len(set(chain[:-1])) == len(chain) - 1 <= text.config.hidden_size, "each token once, one dimension each"
    with torch.no_grad():
        for layer in text.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        text.embed_tokens.weight.zero_()
        text.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        for k, (token, following) in enumerate(zip(chain, chain[1:])):
            text.embed_tokens.weight[token, k] = 1.0
            model.lm_head.weight[following, k] = 100.0  # far above the repetition penalty's reach (÷1.05)


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory) -> QwenJudge:
    return QwenJudge.from_folder(write_tiny_qwen_vl(tmp_path_factory.mktemp("tiny_qwen_vl")))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The strokes are clearly transferred.\nSCORE: 85", 85.0),
        ("score:72", 72.0),
        ("SCORE :   40 ", 40.0),
        ("**SCORE:** 85", 85.0),
        ("**Score**: 91", 91.0),
        ("Score = 85", 85.0),
        ("I would give it 85/100.", 85.0),
        ("SCORE: 85/100", 85.0),
        ("SCORE: 62.5", 62.5),
        ("Earlier I thought SCORE: 20, but on reflection\nSCORE: 70", 70.0),  # the last one wins
        ("SCORE: 30 ... 90/100", 90.0),  # last by position, across both forms
        ("SCORE: 150", 100.0),  # clipped
        ("SCORE: -5", 0.0),  # clipped
        ("SCORE: 1000", 100.0),  # still plausible, clipped
        ("", None),
        ("I cannot tell.", None),
        ("SCORE: eighty-five", None),  # numbers in words are not read
        ("SCORE: 12345", None),  # > 1000: garbage, not clipped
        ("SCORE: <integer 0-100>", None),  # the format echoed back
        ("The underscore: 5 px", None),  # `score` must be a whole word
        ("It scores 85 on texture", None),  # no separator
        ("85/1000", None),  # only /100 is a scale
    ],
)
def test_parse_score(text: str, expected: float | None) -> None:
    assert parse_score(text) == expected


def test_prompt_messages() -> None:
    """Version 2: the content, the style reference and the output, in that order, then the instruction, which
    names them in that order and scores an output without the content's scene (a copy of the style) low."""
    messages = build_messages()
    assert PROMPT_VERSION == "2"
    assert IMAGE_ORDER == ("content", "style", "output")
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert [c["type"] for c in content] == ["image", "image", "image", "text"]
    text = content[3]["text"]
    assert text == INSTRUCTION
    named = [text.index(s) for s in ("first image is the content", "second image is a style reference",
                                     "third image is a stylized output")]
    assert named == sorted(named)
    assert "copy of the style reference" in text and "deserves a low score" in text
    for word in ("texture", "material", "stroke", "colour", "scene"):
        assert word in text.lower()
    assert "SCORE: <integer 0-100>" in text.splitlines()[-1]


def test_chat_template_renders_three_images(judge: QwenJudge) -> None:
    prompt = judge.prompt()
    assert prompt.count(IMAGE_PLACEHOLDER) == 3
    assert prompt.count("<|image_pad|>") == 3
    assert prompt.rindex(IMAGE_PLACEHOLDER) < prompt.index("first image is the content")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_rate_gives_the_processor_content_style_output(judge: QwenJudge, monkeypatch) -> None:
    """Each sample's three images reach the processor in ``IMAGE_ORDER``, pixel for pixel, one prompt each."""
    g = torch.Generator().manual_seed(2)
    contents, styles, outputs = (torch.rand(2, 3, 56, 56, generator=g) for _ in range(3))
    seen = {}
    processor = judge.processor

    class Spy:
        def __getattr__(self, name):
            return getattr(processor, name)

        def __call__(self, *, text, images, **kw):
            seen["text"], seen["images"] = text, images
            return processor(text=text, images=images, **kw)

    monkeypatch.setattr(judge, "processor", Spy())
    judge.rate(outputs, contents=contents, styles=styles, max_new_tokens=1)
    assert len(seen["text"]) == 2 and all(t.count(IMAGE_PLACEHOLDER) == 3 for t in seen["text"])
    want = {"content": to_pil(contents), "style": to_pil(styles), "output": to_pil(outputs)}
    for i, triplet in enumerate(seen["images"]):
        assert [im.tobytes() for im in triplet] == [want[role][i].tobytes() for role in IMAGE_ORDER]


def test_processor_matches_model_config(judge: QwenJudge) -> None:
    tok, cfg = judge.processor.tokenizer, judge.model.config
    assert tok.convert_tokens_to_ids("<|image_pad|>") == cfg.image_token_id == judge.processor.image_token_id
    assert tok.convert_tokens_to_ids("<|vision_start|>") == cfg.vision_start_token_id
    assert tok.convert_tokens_to_ids("<|vision_end|>") == cfg.vision_end_token_id
    assert len(tok) <= cfg.text_config.vocab_size
    assert tok.padding_side == "left"


def test_rate_tiny_model(judge: QwenJudge) -> None:
    g = torch.Generator().manual_seed(0)
    outputs, styles, contents = (torch.rand(2, 3, 56, 56, generator=g) for _ in range(3))
    scores = judge.rate(outputs, contents=contents, styles=styles, max_new_tokens=4)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert all(math.isnan(s) or 0.0 <= s <= 100.0 for s in scores.tolist())
    assert len(judge.last_answers) == 2 and all(isinstance(a, str) for a in judge.last_answers)
    assert judge.last_parse_failures == sum(math.isnan(s) for s in scores.tolist())
    # Batched generation gives the same answers as one sample at a time.
    batched = list(judge.last_answers)
    for i in range(2):
        judge.rate(outputs[i:i + 1], contents=contents[i:i + 1], styles=styles[i:i + 1], max_new_tokens=4)
        assert judge.last_answers == [batched[i]]


def test_left_padded_batch_matches_single(judge: QwenJudge) -> None:
    """Why ``rate`` may batch: prompts of different lengths (images with different token counts), padded on
    the left, generate the same logits as each prompt alone."""
    g = torch.Generator().manual_seed(1)
    square, wide = to_pil(torch.rand(3, 3, 56, 56, generator=g)), to_pil(torch.rand(3, 3, 28, 56, generator=g))
    pairs = [square, wide]  # two prompts of three images each
    cfg = judge._generation_config(3)
    cfg.output_logits, cfg.return_dict_in_generate = True, True
    prompt = judge.prompt()
    batch = judge.processor(text=[prompt, prompt], images=pairs, padding=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(1)
    assert lengths[0] != lengths[1]  # padding really happens
    together = judge.model.generate(**batch, generation_config=cfg)
    for i, pair in enumerate(pairs):
        alone = judge.model.generate(**judge.processor(text=[prompt], images=pair, return_tensors="pt"),
                                     generation_config=cfg)
        for step in range(3):
            torch.testing.assert_close(together.logits[step][i], alone.logits[step][0], atol=1e-5, rtol=1e-4)


def test_rate_rejects_bad_shapes(judge: QwenJudge) -> None:
    x = torch.rand(2, 3, 56, 56)
    with pytest.raises(ValueError, match="batch sizes differ"):
        judge.rate(x, contents=x, styles=torch.rand(1, 3, 56, 56))
    with pytest.raises(ValueError, match="content"):
        judge.rate(x, contents=torch.rand(2, 1, 56, 56), styles=x)
    with pytest.raises(TypeError):  # version 1's call, without the content, no longer runs
        judge.rate(x, x)


def test_vlm_semantic_metric_generates_decodes_and_parses_the_answer(tmp_path: Path) -> None:
    """The registered metric loads the judge from ``<weights dir>/qwen2.5-vl-7b`` (the hub repo's layout). A tiny
    judge whose weights make it answer "SCORE: 42" scores exactly 42 for every pair, through the real generate,
    decode and parse, and the decoded answers are exactly that text."""
    from sxbench import registry, weights

    write_tiny_qwen_vl(tmp_path / "qwen2.5-vl-7b", answer="SCORE: 42")
    assert weights.status("qwen2.5-vl-7b", tmp_path)["present"]
    metric = registry.create_metric("vlm_semantic", weights_dir=tmp_path)
    assert metric.info.backbone.startswith("qwen2.5-vl-7b@")
    assert metric.info.version == PROMPT_VERSION and metric.info.requires == {"content", "style"}
    g = torch.Generator().manual_seed(0)
    x, y, c = (torch.rand(2, 3, 56, 56, generator=g) for _ in range(3))
    v = metric.score(x, content=c, style=y)
    assert v.dtype == torch.float32 and v.tolist() == [42.0, 42.0]
    assert metric.extractor.judge.last_answers == ["SCORE: 42", "SCORE: 42"]  # stopped at <|im_end|>, skipped
    assert metric.extractor.judge.last_parse_failures == 0
    with pytest.raises(ValueError, match="content"):
        metric.score(x, style=y)


def test_unparseable_answers_are_nan_counted_and_stored_as_failed(tmp_path: Path, caplog) -> None:
    """A judge that answers without a score gives NaN for every sample, says so in the log with a count, and a
    run stores those values as failed (``NULL``): the failures a report counts per method. The run also shows
    the evaluator handing the metric the content it now requires."""
    import logging

    from sxbench import registry
    from sxbench.runner import RunConfig, Runner
    from sxbench.store import Store

    weights_dir = tmp_path / "weights"
    write_tiny_qwen_vl(weights_dir / "qwen2.5-vl-7b", answer="No idea")
    metric = registry.create_metric("vlm_semantic", weights_dir=weights_dir)
    x = torch.rand(3, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    with caplog.at_level(logging.WARNING, logger="sxbench.metrics.backbone"):
        v = metric.score(x, content=x, style=x)
    assert all(math.isnan(s) for s in v.tolist())
    assert metric.extractor.judge.last_parse_failures == 3
    assert "3 of 3 answers had no parseable score" in caplog.text and "'No idea'" in caplog.text

    out = tmp_path / "run"
    Runner(RunConfig("synth-smoke", methods=("identity", "stylecopy"), metrics=("vlm_semantic",), out=out,
                     batch_size=4, progress=False, weights_dir=str(weights_dir))).run()
    with Store(out) as st:
        values = st.values()
    judged = values[values.metric == "vlm_semantic"]
    assert len(judged) == 16 and judged.value.isna().all()
    assert judged.groupby("method").value.apply(lambda s: int(s.isna().sum())).to_dict() == {"identity": 8,
                                                                                             "stylecopy": 8}
