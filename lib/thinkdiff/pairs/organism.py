"""The embedded distillation model organism as a pair kind: sizes XS-L, built or loaded from ``data/organism``,
with planted labels in its harvest documents and a control fine-tune beside each pair."""
from __future__ import annotations

import copy

import torch

from .. import organism, paths
from .. import relations as word_relations
from .spec import ModelPair, PairError, PairKind, PairSpec, register, register_kind, resolve_layer

DEFAULT_PAIR = "organism-m"   # the embedded default every notebook runs on


def pair_name(size: str) -> str:
    return f"organism-{size.lower()}"


@register_kind
class OrganismKind(PairKind):
    name = "organism"
    storage_device = "cpu"

    def check_spec(self, spec, where):
        if spec.base not in organism.SIZES or spec.distilled != spec.base:
            raise PairError(f"{where}: an organism pair names one size as base and distilled, one of "
                            f"{list(organism.SIZES)}; got {spec.base!r} / {spec.distilled!r}")

    def load(self, spec, layer, dtype):
        org = organism.get_organism(spec.base)
        lay = resolve_layer(layer, org.base.config.num_hidden_layers, spec.name)
        base, distilled, control = org.base, org.distilled, org.control
        if dtype != "float32":      # copies: the organism's cached fp32 models stay as they are
            base, distilled, control = (copy.deepcopy(m).to(getattr(torch, dtype)) for m in (base, distilled, control))
        return ModelPair(base, distilled, org.tokenizer, org.tokenizer, lay, spec, org, control=control)

    def documents(self, pair, n_docs, teacher_fraction, seed, **corpus):
        if corpus:
            raise PairError(f"corpus options {sorted(corpus)} do not apply to {pair.spec.name}: the organism draws "
                            "its own labelled documents")
        return organism.harvest_documents(pair.tokenizer, n_docs, teacher_fraction, seed)

    def check_run(self, spec, harvest, evaluate, where):
        n_layers = organism.SIZES[spec.base].layers
        layer = harvest["layer"]
        if layer is not None and not 1 <= layer <= n_layers:
            raise PairError(f"{where}: [harvest] layer = {layer} is out of range for {spec.name} "
                            f"({n_layers} blocks): 1 <= layer <= {n_layers}")
        if harvest["corpus"]:
            raise PairError(f"{where}: [harvest.corpus] applies to real-data pairs, not to {spec.name}")
        sizes = evaluate["sizes"]
        bad = [s for s in sizes if s not in organism.SIZES] if isinstance(sizes, list) else sizes
        if not isinstance(sizes, list) or not sizes or bad:
            raise PairError(f"{where}: [evaluate] sizes = {sizes!r}; each must be an organism size, one of "
                            f"{list(organism.SIZES)}")

    def members(self, spec, evaluate):
        return [(s, pair_name(s)) for s in evaluate["sizes"]]

    def describe(self, pair):
        m = pair.organism.manifest
        return {"parameters": m["n_params"], "layers": m["config"]["arch"]["layers"],
                "d_model": m["config"]["arch"]["hidden"], "pretrain s": m["train_seconds"]["pretrain"],
                "SFT s": m["train_seconds"]["sft"],
                "source": "shipped" if paths.DATA_DIR in pair.organism.path.parents else "built"}

    relations_single_token = True

    def relations(self):
        """The organism's own relations, each word one token of its vocabulary (``relations.organism_relations``)."""
        return word_relations.organism_relations()

    def size_label(self, spec):
        return spec.base


for _size in organism.SIZES:
    register(PairSpec(name=pair_name(_size), kind="organism", base=_size, distilled=_size, task="organism-world",
                      corpus="organism", train_config="organism", notes=f"distillation model organism, size {_size}"))
