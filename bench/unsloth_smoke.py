"""Can Unsloth run on the GPU machine at all? A 2-layer random Mistral in 4-bit, one LoRA training step."""
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
t = time.time()
try:
    import unsloth
    from unsloth import FastLanguageModel
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    print("unsloth", getattr(unsloth, "__version__", "?"), "import", round(time.time() - t, 1), "s", flush=True)
    d = "/tmp/unsloth-smoke-model"
    cfg = MistralConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=8,
                        num_key_value_heads=2, vocab_size=49152, torch_dtype="bfloat16")
    MistralForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d)
    AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(d)
    model, tok = FastLanguageModel.from_pretrained(model_name=d, max_seq_length=512, dtype=torch.bfloat16,
                                                   load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             use_gradient_checkpointing="unsloth")
    ids = torch.randint(0, 49152, (4, 128), device="cuda")
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    print("OK loss", float(out.loss), "total", round(time.time() - t, 1), "s", flush=True)
except Exception as e:  # noqa: BLE001
    import traceback

    traceback.print_exc()
    print("FAILED", type(e).__name__, str(e)[:500])
