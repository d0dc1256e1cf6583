"""Offline tokenizers and tiny random-weight text models, for tests, benchmarks and the offline demo.

Nothing here touches the network: tokenizers are built from an in-repo word list (a WordPiece vocab
passed as a dict, and a byte-level BPE trained on the fly with ``tokenizers``), and models are built
from small configs with a fixed seed, so every actor builds the same weights. Their output is
gibberish by design; every model id they report starts with ``tiny:`` and ends in ``-random`` so the
metadata says so. The architectures are the real ones (BLIP, GIT, LLaVA, Llama), so batching,
padding, generation and ``save_pretrained`` / ``from_pretrained`` run the same code as full models.
"""

from __future__ import annotations

import random
from typing import Any

import torch

# Words for gibberish that reads like a caption; the corpus for the BPE trainer is built from them.
WORDS = (
    "a an the of and in on at with from over under near behind while his her their its this that "
    "is are was being has shows showing there some two three many small large little big young old "
    "man woman person people child boy girl dog cat bird horse car bus bike boat train ball cake "
    "table chair room kitchen street road field beach water sea river snow sky tree grass park city "
    "stage screen game video clip song music voice crowd team player camera phone hand face hair "
    "red green blue yellow purple white black orange pink brown grey dark bright colourful "
    "circle square triangle shape line light shadow background pattern texture "
    "moving running walking jumping dancing singing talking playing cooking riding driving "
    "sitting standing holding looking smiling swimming flying falling turning rolling "
    "left right up down across around slowly quickly together outdoors indoors "
    "sound noise speech laughter applause engine wind rain birdsong footsteps guitar piano drums"
).split()
SPECIALS = ("<|unk|>", "<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<image>")
IMAGE_TOKEN = "<image>"
# Role-tagged turns; images become <image> markers that the LLaVA processor expands.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Larger than the usual 0.02 so that random models' output depends on their input (the tests check
# that distinct videos get distinct captions, which makes ordering bugs visible).
INIT_RANGE = 0.2
SEED = 0
TINY_IDS = {
    "blip": "tiny:blip-random",
    "git": "tiny:git-random",
    "llava": "tiny:llava-random",
    "llama": "tiny:llama-random",
}


def tiny_model_id(arch: str) -> str:
    """The id recorded in manifests for a tiny random-weight model of ``arch``."""
    return TINY_IDS.get(arch, f"tiny:{arch}-random")


def corpus(n_sentences: int = 400, seed: int = SEED) -> list[str]:
    """The BPE trainer's input: pseudo-sentences over ``WORDS`` and the repo's prompt files.

    The prompts are in it so they encode to few tokens: the tiny models then spend their time on the
    same number of positions a real tokenizer would give them, not on one token per character.
    """
    from stages.prompts import PROMPT_DIR

    rng = random.Random(seed)
    prompts = [p.read_text(encoding="utf-8") for p in sorted(PROMPT_DIR.glob("*.txt"))]
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 14))) for _ in range(n_sentences)] + prompts * 3


def word_tokenizer() -> Any:
    """A BERT WordPiece tokenizer over ``WORDS`` (for BLIP and GIT), built from an in-memory vocab."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *dict.fromkeys(WORDS)]
    # transformers 5 ignores vocab_file= silently: the vocab must be passed as a dict.
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    return tok


def bpe_tokenizer(vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer trained on ``corpus()``, with chat roles, ``<image>`` and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    # Printable ASCII, space and newline only (byte-level names: Ġ is space, Ċ newline), so random
    # models emit readable gibberish rather than stray control bytes; other characters become <|unk|>.
    alphabet = [chr(c) for c in range(33, 127)] + ["Ġ", "Ċ"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False, initial_alphabet=alphabet
    )
    tk.train_from_iterator(corpus(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _seeded(build: Any, seed: int) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def _small_transformer(vocab: int, **extra: Any) -> dict[str, Any]:
    return dict(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=INIT_RANGE,
        **extra,
    )


def _small_vision(image_size: int = 32, patch_size: int = 8) -> dict[str, Any]:
    return dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=patch_size,
        initializer_range=INIT_RANGE,
    )


def build_tiny_blip(seed: int = SEED) -> tuple[Any, Any]:
    """A random-weight BLIP captioner (about 0.1 M parameters) and its processor."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tok = word_tokenizer()
    text = _small_transformer(
        len(tok),
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
        sep_token_id=tok.sep_token_id,
        eos_token_id=tok.sep_token_id,
    )
    cfg = BlipConfig(
        text_config=text, vision_config=_small_vision(), projection_dim=32, initializer_range=INIT_RANGE
    )
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
    )
    return _seeded(lambda: BlipForConditionalGeneration(cfg), seed), processor


def build_tiny_git(seed: int = SEED) -> tuple[Any, Any]:
    """A random-weight GIT captioner and its processor."""
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tok = word_tokenizer()
    cfg = GitConfig(
        vision_config=_small_vision(),
        **_small_transformer(
            len(tok),
            max_position_embeddings=64,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
            pad_token_id=tok.pad_token_id,
        ),
    )
    image = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return _seeded(lambda: GitForCausalLM(cfg), seed), GitProcessor(image_processor=image, tokenizer=tok)


def build_tiny_llava(seed: int = SEED) -> tuple[Any, Any]:
    """A random-weight LLaVA (CLIP vision tower + Llama) taking several images and a chat prompt."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = bpe_tokenizer()
    text = dict(
        model_type="llama",
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **_small_transformer(len(tok)),
    )
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", projection_dim=32, **_small_vision()),
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    image = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image,
        tokenizer=tok,
        patch_size=8,
        chat_template=CHAT_TEMPLATE,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    model = _seeded(lambda: LlavaForConditionalGeneration(cfg), seed)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor


def build_tiny_llama(seed: int = SEED) -> tuple[Any, Any]:
    """A random-weight Llama chat model and its BPE tokenizer (with a chat template)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = bpe_tokenizer()
    cfg = LlamaConfig(
        num_key_value_heads=1,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **_small_transformer(len(tok)),
    )
    model = _seeded(lambda: LlamaForCausalLM(cfg), seed)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


TINY_BUILDERS = {
    "blip": build_tiny_blip,
    "git": build_tiny_git,
    "llava": build_tiny_llava,
    "llama": build_tiny_llama,
}


def build_tiny(arch: str, seed: int = SEED) -> tuple[Any, Any]:
    """``(model, processor or tokenizer)`` of a tiny architecture by name."""
    if arch not in TINY_BUILDERS:
        raise ValueError(f"tiny text architecture {arch!r}: expected one of {', '.join(TINY_BUILDERS)}")
    return TINY_BUILDERS[arch](seed)
