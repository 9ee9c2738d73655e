"""The words the pages use, each with the one line a newcomer needs: shown on hover wherever the word appears
(the `term` template tag) and listed on the Guidance page."""
from __future__ import annotations

# term → its one line. Keys are lower-case; the pages show the term as they write it.
TERMS: dict[str, str] = {
    "pre-flight": "The review of a run's config before it starts: each value held against the recommended range for "
                  "this dataset and model, with a fix. Notes, never refusals.",
    "findings": "Symptoms the detectors saw in a run's curves while it trained (a flat loss, a spike, eval loss "
                "rising), each with the knob to turn.",
    "fit planner": "The prediction, before launch, of a run's peak GPU memory and tokens per second on the queue's "
                   "GPU, from the model's shapes and the team's measured runs.",
    "uncalibrated": "The fit planner has no measured runs for this GPU yet: its figures come from a reference model "
                    "and may be off until a few runs have finished there.",
    "effective batch": "Sequences per optimizer update: micro-batch × gradient accumulation steps × GPUs. 2×4 and 8×1 "
                       "are the same effective batch of 8.",
    "lora scale": "What the adapter's output is multiplied by: lora_alpha / r, or lora_alpha / √r with rsLoRA. "
                  "Doubling it is much like doubling the learning rate.",
    "tokens per step": "Tokens per optimizer update: the effective batch × max_length when packed (at most that "
                       "without packing).",
    "recommended": "The value or range the guidance gives for a parameter, from the tuning notes this tool is built "
                   "on; a starting point, not a rule.",
    "early stopping": "Stop once eval loss has not improved for a number of evals (the patience) and keep the best "
                      "eval's checkpoint as the adapter.",
}


def explain(term: str) -> str:
    """The one line for a term, "" for a word that has none."""
    return TERMS.get(term.strip().lower(), "")
