"""Write an F16 GGUF of a random LLaMA-2-7B (the LLM of MiniGPT-Med) for llama.cpp.

Random weights cost llama.cpp exactly what real ones do. As `minigpt-med bench --synthetic 7b`
does, one random block per tensor shape is reused for every layer, so this needs little memory;
the file itself is 13.5 GB. The vocabulary is a stand-in of the real size (32000): the
benchmark feeds token ids, never text.

    python make_gguf.py OUT.gguf
"""

import sys

import numpy as np
import gguf

HIDDEN, FFN, LAYERS, HEADS, VOCAB, CTX = 4096, 11008, 32, 32, 32000, 4096


def vocab():
    tokens, types = ["<unk>", "<s>", "</s>"], [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    while len(tokens) < VOCAB:
        tokens.append(f"\u2581w{len(tokens)}")
        types.append(gguf.TokenType.NORMAL)
    return tokens, [-float(i) for i in range(VOCAB)], types


def main(out):
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(out, "llama")
    w.add_name("random-llama-2-7b")
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def rand(shape, scale=0.02):
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float16)

    blocks = {s: rand(s) for s in [(HIDDEN, HIDDEN), (FFN, HIDDEN), (HIDDEN, FFN)]}
    norm = np.ones(HIDDEN, dtype=np.float32)
    w.add_tensor("token_embd.weight", rand((VOCAB, HIDDEN)))
    for i in range(LAYERS):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm)
        for name in ["attn_q", "attn_k", "attn_v", "attn_output"]:
            w.add_tensor(p + name + ".weight", blocks[(HIDDEN, HIDDEN)])
        w.add_tensor(p + "ffn_norm.weight", norm)
        w.add_tensor(p + "ffn_gate.weight", blocks[(FFN, HIDDEN)])
        w.add_tensor(p + "ffn_up.weight", blocks[(FFN, HIDDEN)])
        w.add_tensor(p + "ffn_down.weight", blocks[(HIDDEN, FFN)])
    w.add_tensor("output_norm.weight", norm)
    w.add_tensor("output.weight", rand((VOCAB, HIDDEN)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(sys.argv[1])
