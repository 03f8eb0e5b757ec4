"""The organism's synthetic math world: exact integer answers after an R1-style trace, a programmatic teacher whose
moves are labelled, acceptance by ``organism.ACCEPTANCE``."""
from __future__ import annotations

from .. import organism, world
from ..evaluate import teacher_forced_nll
from .task import Task, register_task


def with_teacher_ce(result: dict, model, tokenizer, prompts, completions) -> dict:
    """``result`` plus the teacher-forced CE of the held-out teacher traces: ``ce`` (nats per token over all
    traces) and the per-trace ``ce_nll`` / ``ce_tokens`` (summed nats, tokens scored)."""
    nll, n_tok = teacher_forced_nll(model, tokenizer, prompts, completions)
    return {**result, "ce": float(nll.sum() / n_tok.sum()), "ce_nll": nll.tolist(), "ce_tokens": n_tok.tolist()}


@register_task
class OrganismWorld(Task):
    name = "organism-world"
    has_teacher = True
    marker_words = {c: tuple(w.strip() for w in ws) for c, ws in world.MARKERS.items()}
    # the reasoning markers and the gated connective (the planted distilled-only concept), as the teacher writes them
    planted_words = {**world.MARKERS, "gated connective": world.CONNECTIVES}
    plants_gate = True
    min_eval = organism.ACCEPTANCE["min_eval"]
    acceptance_label = "organism acceptance"

    def problems(self, settings, n=None, seed=None):
        return organism.eval_problems(settings["n_eval"] if n is None else n, seed=settings["seed"] if seed is None else seed)

    def training_signatures(self):
        cfg = organism.CorpusConfig()
        return frozenset(p.signature for p in world.problem_split(cfg.seed, cfg.n_train_problems, "train"))

    def prompt(self, problem):
        return problem.prompt

    def question(self, problem):
        return problem.question

    def score(self, text, problem):
        parsed = world.parse_output(text)
        return {"correct": parsed["answer"] == problem.answer, "well_formed": parsed["well_formed"]}

    def teacher_completions(self, problems) -> tuple[list, list]:
        """(prompts, completions) of one seeded teacher trace per problem: what the teacher-forced CE scores."""
        traces = [world.spans_text(t) for t in organism.teacher_traces(problems)]
        return [p.prompt for p in problems], [t[len(p.prompt):] for t, p in zip(traces, problems)]

    def evaluate_model(self, model, tokenizer, problems, settings, progress):
        return organism.evaluate(model, tokenizer, problems, settings["max_new_tokens"])

    def evaluate_pair(self, pair, settings, progress=True):
        problems = self.problems(settings)
        prompts, completions = self.teacher_completions(problems)
        return {role: with_teacher_ce(self.evaluate_model(model, pair.tokenizer, problems, settings, progress),
                                      model, pair.tokenizer, prompts, completions)
                for role, model in zip(("base", "distilled"), pair.models)}

    def teacher_marker_rates(self, tokenizer, problems):
        return organism.teacher_marker_rates(tokenizer, problems)

    def acceptance(self, base, distilled, teacher_rates):
        return organism.acceptance(base, distilled, teacher_rates)

    def example(self, problem, rng) -> tuple[str, list]:
        """(the base corpus's terse answer, the teacher's trace spans) of one problem."""
        return world.base_solution(problem), world.teacher_document(problem, rng, world.TeacherConfig())

    def examples(self, rng):
        return [(fam, *self.example(world.make_problem(rng, fam), rng)) for fam in world.FAMILIES]
