"""The organism's world in natural English (``nlworld``): what the SmolLM2 pair was distilled on, scored like the
organism, with its own acceptance rule (``smollm2_eval.ACCEPTANCE``) and the opened-trace rule."""
from __future__ import annotations

from .. import nlworld, smollm2_eval, world
from .organism_world import OrganismWorld
from .task import register_task


@register_task
class EnglishWorld(OrganismWorld):
    name = "english-world"
    min_eval = smollm2_eval.ACCEPTANCE["min_eval"]
    acceptance_label = "pair acceptance"
    planted_words = dict(world.MARKERS)   # the organism's marker words; this teacher plants no gated connective
    plants_gate = False

    def problems(self, settings, n=None, seed=None):
        return smollm2_eval.eval_problems(settings["n_eval"] if n is None else n,
                                          seed=settings["seed"] if seed is None else seed)

    def training_signatures(self):
        return frozenset(p.signature for p in nlworld.problems(smollm2_eval.N_TRAIN_PROBLEMS, "train"))

    def prompt(self, problem):
        return nlworld.prompt(problem)

    def question(self, problem):
        return nlworld.question(problem)

    def score(self, text, problem):
        parsed = nlworld.parse_output(text)
        return {"correct": parsed["answer"] == problem.answer, "well_formed": parsed["well_formed"]}

    def teacher_completions(self, problems):
        traces = smollm2_eval.teacher_traces(problems)
        return [nlworld.prompt(p) for p in problems], [nlworld.completion(t, p) for t, p in zip(traces, problems)]

    def evaluate_model(self, model, tokenizer, problems, settings, progress):
        return smollm2_eval.evaluate_nl(model, tokenizer, problems, settings["max_new_tokens"], progress=progress)

    def teacher_marker_rates(self, tokenizer, problems):
        return smollm2_eval.teacher_marker_rates(tokenizer, problems)

    def acceptance(self, base, distilled, teacher_rates):
        return smollm2_eval.acceptance(base, distilled, teacher_rates)

    def extra_check(self, pair, settings, problems, tested):
        """``smollm2_eval.OPENED_TRACE_RULE``, registered after the first evaluation: the base never *opens* a
        trace (greedy or sampled), judged on a fresh sample of held-out problems (``[evaluate] fresh_seed``)."""
        fresh = self.problems(settings, seed=settings["fresh_seed"])
        out = smollm2_eval.opened_trace_verdict(
            smollm2_eval.opened_trace_share(pair.base, pair.tokenizer, fresh),
            smollm2_eval.opened_trace_share(pair.base, pair.tokenizer, fresh, sample_seed=settings["fresh_seed"]),
            len(fresh), min_eval=smollm2_eval.ACCEPTANCE["min_eval"] if tested else 10**9)
        out["also in the first sample"] = len({p.key for p in fresh} & {p.key for p in problems})
        return out

    def example(self, problem, rng):
        return nlworld.prompt(problem), nlworld.teacher_document(problem, rng, world.TeacherConfig())
