"""Llama-3's exact tokenizer, for random-weight Llama-3.1-8B benchmarks on machines without the hub.

The gated `meta-llama/Llama-3.1-8B-Instruct` repo cannot be fetched there, but Meta's own PyPI wheel
`llama-models` ships the tokenizer (`llama_models/llama3/tokenizer.model`, tiktoken's BPE format). This turns it
into a transformers fast tokenizer with the same ids (128,000 BPE tokens, then Meta's 256 special tokens) and a
Llama-3-style chat template, so prompts tokenize as with the real model and constrained JSON decoding has real
byte-level tokens to work with (a word-level stand-in vocabulary cannot spell `{`).

    pip download --no-deps llama-models && unzip -j llama_models-*.whl 'llama_models/llama3/tokenizer.model'
    python bench/llama3_tokenizer.py tokenizer.model OUT_DIR      # needs `tiktoken` (bench only)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Meta's llama3/tokenizer.py: the 256 special tokens after the BPE ranks. Its pre-split pattern is
# TikTokenConverter's default.
NAMED_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|image|>",
)  # fmt: skip
SPECIAL_COUNT = 256


def special_tokens() -> list[str]:
    reserved = [f"<|reserved_special_token_{2 + i}|>" for i in range(SPECIAL_COUNT - len(NAMED_SPECIALS))]
    return [*NAMED_SPECIALS, *reserved]


def llama3_tokenizer(model_file: Path) -> Any:  # -> transformers.PreTrainedTokenizerFast
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from nim_llm.tiny import CHAT_TEMPLATE

    specials = special_tokens()
    backend = TikTokenConverter(vocab_file=str(model_file), extra_special_tokens=specials).converted()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        chat_template=CHAT_TEMPLATE,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_file", type=Path, help="llama_models/llama3/tokenizer.model")
    p.add_argument("out", type=Path, help="folder to save the tokenizer in")
    args = p.parse_args()
    tokenizer = llama3_tokenizer(args.model_file)
    tokenizer.save_pretrained(args.out)
    ids = tokenizer("Hello world")["input_ids"]
    print(f"saved {len(tokenizer)} tokens to {args.out}; 'Hello world' -> {ids}")


if __name__ == "__main__":
    main()
