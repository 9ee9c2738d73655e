// A guidance page's calculators: each form recomputes its result as the user types, or names the bad input.
import { alphaAfterRsloraSwitch, alphaForGain, gradAccumForTarget, loraGain, rankRange, recommendedWarmupSteps,
  stepPlan } from "./calculators.js";

function num(form, name) {
  const text = form.elements.namedItem(name).value.trim();
  return text === "" ? NaN : Number(text);
}

function checked(form, name) {
  return form.elements.namedItem(name).checked;
}

const CALCULATORS = {
  step_plan(form) {
    const maxSteps = num(form, "max_steps");
    const plan = stepPlan({ numExamples: num(form, "num_examples"), microBatch: num(form, "micro_batch"),
      gradAccum: num(form, "grad_accum"), epochs: num(form, "epochs"), maxSteps: Number.isNaN(maxSteps) ? null : maxSteps });
    return `effective batch ${plan.effective_batch} · ${plan.steps_per_epoch} steps per epoch · ${plan.total_steps} optimizer steps in all`;
  },
  grad_accum(form) {
    const micro = num(form, "micro_batch");
    const target = num(form, "target");
    const accum = gradAccumForTarget(micro, target, num(form, "devices"));
    return `gradient_accumulation_steps = ${accum} (effective batch ${micro * accum * num(form, "devices")})`;
  },
  warmup(form) {
    const steps = recommendedWarmupSteps(num(form, "total_steps"), num(form, "ratio"), num(form, "floor"));
    return `warmup_steps = ${steps}`;
  },
  gain_alpha(form) {
    const r = num(form, "r");
    const rslora = checked(form, "use_rslora");
    const alpha = num(form, "lora_alpha");
    const gain = loraGain(alpha, r, rslora);
    const other = alphaAfterRsloraSwitch(alpha, r, !rslora);
    const target = num(form, "gain");
    const matched = Number.isNaN(target) ? "" : ` · for gain ${target}: lora_alpha = ${alphaForGain(target, r, rslora)}`;
    return `gain ${Number(gain.toPrecision(4))} (${rslora ? `${alpha} / √${r}` : `${alpha} / ${r}`}) · same gain with rsLoRA ${rslora ? "off" : "on"}: lora_alpha = ${other}${matched}`;
  },
  rank_range(form) {
    const [low, high] = rankRange(num(form, "num_examples"));
    return low === high ? `r = ${low}` : `r from ${low} to ${high}`;
  },
};

for (const form of document.querySelectorAll("form.calculator")) {
  const output = form.querySelector("output");
  const update = () => {
    try {
      output.textContent = CALCULATORS[form.dataset.calculator](form);
      output.classList.remove("field-error");
    } catch (error) {
      output.textContent = error.message;
      output.classList.add("field-error");
    }
  };
  form.addEventListener("input", update);
  form.addEventListener("submit", (event) => event.preventDefault());
  update();
}
