"""Tiny, random-weight models built locally for the `tiny` profile and for tests (no download).

Each builder writes a folder that loads through the real `from_pretrained`/`pipeline(...)` path. Classifier
builders take `force`: the classifier's weights are zeroed and its bias set so that it always answers the given
label with high confidence (a random tiny model would otherwise flag at random).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

FORCED_LOGIT = 4.0  # softmax([4, -4]) ~ 0.9997: a confident, deterministic decision
Force = Literal["safe", "unsafe"]


def build_once(dest: Path, build: Callable[[Path], None]) -> Path:
    """Build into a temp folder and rename, so a crash never leaves a half-written model behind."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        build(tmp)
        tmp.rename(dest)
    except OSError:
        if not dest.exists():  # not just a concurrent builder that won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _force_head(weight: object, bias: object, force: Force) -> None:
    import torch

    with torch.no_grad():
        weight.zero_()  # type: ignore[attr-defined]
        sign = 1.0 if force == "unsafe" else -1.0
        bias.copy_(torch.tensor([-sign * FORCED_LOGIT, sign * FORCED_LOGIT]))  # type: ignore[attr-defined]


def build_prompt_classifier(dest: Path, force: Force = "safe") -> Path:
    """DistilBERT text classifier with labels SFW/NSFW (as ezb/NSFW-Prompt-Detector) and a byte-level tokenizer."""

    def build(path: Path) -> None:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        vocab = {tok: i for i, tok in enumerate(specials)}
        for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
            vocab[ch] = len(vocab)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        max_len = 128  # truncation only works when the tokenizer knows its limit
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=max_len,
        )
        torch.manual_seed(0)
        config = DistilBertConfig(
            vocab_size=len(vocab),
            dim=32,
            n_layers=1,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=max_len,
            id2label={0: "SFW", 1: "NSFW"},
            label2id={"SFW": 0, "NSFW": 1},
        )
        model = DistilBertForSequenceClassification(config)
        _force_head(model.classifier.weight, model.classifier.bias, force)
        model.save_pretrained(path)
        fast.save_pretrained(path)

    return build_once(dest, build)


def build_image_classifier(dest: Path, force: Force = "safe") -> Path:
    """ViT image classifier with labels normal/nsfw (as Falconsai/nsfw_image_detection)."""

    def build(path: Path) -> None:
        import torch
        from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

        torch.manual_seed(0)
        side = 32
        config = ViTConfig(
            image_size=side,
            patch_size=8,
            num_channels=3,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            id2label={0: "normal", 1: "nsfw"},
            label2id={"normal": 0, "nsfw": 1},
        )
        model = ViTForImageClassification(config)
        _force_head(model.classifier.weight, model.classifier.bias, force)
        model.save_pretrained(path)
        ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(path)

    return build_once(dest, build)


def byte_fallback_gemma_tokenizer():  # -> transformers.GemmaTokenizer
    """A Gemma tokenizer with Gemma's special tokens at their real ids (pad 0, eos 1, bos 2, unk 3) and one token per
    byte: any text encodes without a download, and every id is far below Gemma's vocabulary size."""
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})  # byte fallback covers any text
    return GemmaTokenizer(vocab=vocab, merges=[])


def build_sana(dest: Path) -> Path:
    """SanaSprintPipeline from diffusers' fast-test-sized configs with a byte-fallback Gemma tokenizer.

    Constraints (REFERENCE.md §6): caption_channels = Gemma hidden_size; cross_attention_dim = heads x head dim;
    guidance_embeds=True; transformer channels = VAE latent channels; Gemma vocab >= tokenizer size.
    """

    def build(path: Path) -> None:
        import torch
        from diffusers import AutoencoderDC, SanaSprintPipeline, SanaTransformer2DModel, SCMScheduler
        from transformers import Gemma2Config, Gemma2Model

        torch.manual_seed(0)
        latent, hidden = 4, 8
        transformer = SanaTransformer2DModel(
            patch_size=1,
            in_channels=latent,
            out_channels=latent,
            num_layers=1,
            num_attention_heads=2,
            attention_head_dim=4,
            num_cross_attention_heads=2,
            cross_attention_head_dim=4,
            cross_attention_dim=8,
            caption_channels=hidden,
            sample_size=32,
            qk_norm="rms_norm_across_heads",
            guidance_embeds=True,
        )
        vae = AutoencoderDC(
            in_channels=3,
            latent_channels=latent,
            attention_head_dim=2,
            encoder_block_types=("ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            encoder_qkv_multiscales=((), (5,)),
            decoder_qkv_multiscales=((), (5,)),
            encoder_layers_per_block=(1, 1),
            decoder_layers_per_block=(1, 1),
            downsample_block_type="conv",
            upsample_block_type="interpolate",
            decoder_norm_types="rms_norm",
            decoder_act_fns="silu",
            scaling_factor=0.41407,
        )
        tokenizer = byte_fallback_gemma_tokenizer()
        text_encoder = Gemma2Model(
            Gemma2Config(
                head_dim=16,
                hidden_size=hidden,
                intermediate_size=64,
                max_position_embeddings=8192,
                num_attention_heads=2,
                num_hidden_layers=1,
                num_key_value_heads=2,
                vocab_size=len(tokenizer),
                attn_implementation="eager",
            )
        )
        pipe = SanaSprintPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=SCMScheduler()
        )
        pipe.save_pretrained(path)

    return build_once(dest, build)
