"""A user's own reward, named in a recipe as `tests.e2e.custom_reward:short_answer` (the shared micro run uses
it, so it is imported and called inside the Ray learner workers), and a few unusable ones for the load checks."""


def short_answer(prompts, completions, **kwargs) -> list[float | None]:
    """1.0 for a completion under 40 characters: any rule a user may want, in TRL's reward signature."""
    return [1.0 if len(c if isinstance(c, str) else c[-1]["content"]) < 40 else 0.0 for c in completions]


def wrong_length(prompts, completions, **kwargs):
    return [1.0]


def no_kwargs(completions):
    return [0.0 for _ in completions]


NOT_A_FUNCTION = 3
