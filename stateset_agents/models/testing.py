"""A tiny chat model built in code, for tests and examples that need real mechanics fast.

``build_tiny_model(path)`` trains a byte-level BPE tokenizer on a few sentences (about 10 ms), wraps it in a
``PreTrainedTokenizerFast`` with a ChatML chat template, builds a 2-layer Llama (about 130K parameters) with
a fixed seed and saves both to ``path``. Its output is gibberish; it is for mechanics, not quality.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CHATML_TEMPLATE", "build_tiny_model"]

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Hello, how can I help you with your order today?",
    "Your package is delayed at the regional hub and should arrive on March 14.",
    "I have issued a full refund of $89 to your original payment method.",
    "Could you tell me your order number and the email on the account?",
    "Let me check the outage map for your region and restart your router.",
    "Our Team plan costs $12 per seat per month; I can book a demo for Tuesday.",
    '<tool_call>{"name": "lookup_order", "arguments": {"order_id": "ORD-1042"}}</tool_call>',
    "Thanks for your patience! Is there anything else I can help with? [END]",
]


def build_tiny_model(path: str | os.PathLike[str], *, vocab_size: int = 512, hidden_size: int = 64,
                     num_layers: int = 2, seed: int = 0) -> Path:
    """Build and save the tiny tokenizer + Llama model; return the folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    return path
