"""A tiny random Llama with a real byte-level BPE tokenizer and a tool-aware chat template, built locally.

Used by the `tiny` profile and most tests: it exercises the whole serving path (chat template, tokenizer,
KV cache, sampling, constrained decoding) in about a second with no download. Its weights are random, so its
text is gibberish; tests check contracts, not quality. The build is cached under `cache_dir`, keyed by the
installed library versions because saved tokenizer files depend on them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

# A Llama-3-style template: the same special tokens and tool convention (the tools are listed in the system
# turn as JSON and the model answers a call as `{"name": ..., "parameters": {...}}`), so the tool-calling path
# is tested the way Llama-3.1 uses it.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if tools %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\nYou can call these functions. To call one, answer with "
    'JSON {"name": function name, "parameters": arguments}.\\n\' }}'
    "{%- for t in tools %}{{ t | tojson }}{{ '\\n' }}{%- endfor %}{{ '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if m.get('tool_calls') %}"
    "{%- for c in m['tool_calls'] %}"
    "{{ '{\"name\": \"' + c['function']['name'] + '\", \"parameters\": ' + c['function']['arguments'] + '}' }}"
    "{%- endfor %}"
    "{%- elif m['content'] is string %}{{ m['content'] }}"
    "{%- endif %}"
    "{{ '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|pad|>"]

# Enough varied English and JSON for the BPE to learn merges that make prompts shorter than bytes.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello, how are you today? I am fine, thank you.",
    "A wooden chair, a round table, a lamp, a sofa and a plant stand in the living room.",
    '{"name": "chair", "count": 2, "position": [0.0, 1.5, -2.0], "prompt": "a red chair"}',
    "def main():\n    return 42\n\nfor i in range(10):\n    print(i)",
    "What is the capital of France? Paris is the capital of France. Berlin, Rome, Madrid.",
]
VOCAB_SIZE = 512


def _versions_key() -> str:
    import tokenizers
    import transformers

    return f"tf{transformers.__version__}-tk{tokenizers.__version__}"


def build_tokenizer():  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_model(vocab_size: int, bos_id: int, eos_id: int, pad_id: int, seed: int = 0):  # -> LlamaForCausalLM
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def build_tiny_llm(cache_dir: Path) -> Path:
    """Build (once per library version) and return the folder holding the tiny model and tokenizer."""
    target = Path(cache_dir) / f"tiny-llama-{_versions_key()}"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    # Build beside the target and rename, so a concurrent or interrupted build never leaves a half folder.
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
