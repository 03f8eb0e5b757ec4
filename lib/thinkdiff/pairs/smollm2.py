"""SmolLM2-135M-Instruct and its LoRA-distilled reasoner as a pair kind: the base converted exactly to Qwen2 from
the shipped GGUF, the distilled model (and a control fine-tune) merged from the adapters in ``data/smollm2``;
harvest documents are labelled natural-English teacher traces mixed with CHAMP text, all offline."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from .. import smollm2, smollm2_corpus, smollm2_eval
from .. import hf as hf_loading
from .spec import ModelPair, PairError, PairKind, PairSpec, register, register_kind, resolve_layer


@register_kind
class SmolLM2Kind(PairKind):
    name = "smollm2"

    def load(self, spec, layer, dtype):
        base, distilled = (str(d) for d in smollm2.pair_dirs())
        device_map = spec.placement if torch.cuda.is_available() else "cpu"
        hf = hf_loading.load_hf_pair(base, distilled, dtype=dtype, device_map=device_map)
        lay = resolve_layer(layer, hf.base.config.num_hidden_layers, spec.name)
        control, control_dir = None, smollm2.control_dir()
        if control_dir is not None:   # the same architecture and dtype as the base, placed with it
            control = AutoModelForCausalLM.from_pretrained(control_dir, dtype=getattr(torch, dtype)).eval()
            control.to(hf.base.device)
        return ModelPair(hf.base, hf.distilled, hf.base_tokenizer, hf.base_tokenizer, lay, spec,
                         own_tokenizers=(hf.base_tokenizer, hf.distilled_tokenizer), control=control)

    def describe(self, pair):
        m = smollm2_eval.distill_manifest()   # the LoRA distillation's own record (data/smollm2/manifest.json)
        return {**super().describe(pair), "LoRA SFT s": m["train_seconds"], "SFT steps": len(m["losses"]),
                "first SFT loss": m["losses"][0], "last SFT loss": m["losses"][-1]}

    def documents(self, pair, n_docs, teacher_fraction, seed, **corpus):
        bad = sorted(set(corpus) - {"max_tokens"})
        if bad:
            raise PairError(f"corpus options {bad} do not apply to {pair.spec.name} (labelled teacher traces + "
                            "CHAMP text, all offline); it takes only max_tokens")
        return smollm2_corpus.harvest_documents(pair.tokenizer, n_docs, teacher_fraction, seed, **corpus)


register(PairSpec(name="smollm2-135m", kind="smollm2", base="SmolLM2-135M-Instruct (GGUF, converted to Qwen2)",
                  distilled="the same + data/smollm2/adapter (LoRA SFT)", task="english-world", corpus="smollm2",
                  layer=smollm2.LAYER, dtype="bfloat16", train_config="organism",
                  notes="SmolLM2-135M-Instruct vs its LoRA-distilled reasoner (natural-English teacher traces)"))
