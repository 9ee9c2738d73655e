// The seed's calculators in the browser: the same rules, checks and numbers as guidance/calculators.py (a browser test compares them).
import { effectiveBatch, stepsPerEpoch, totalSteps } from "./derived.js";

export const WARMUP_FLOOR_RANGE = [10, 25];

// Python's round(): halves go to the even neighbour.
export function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

function positiveInt(name, value) {
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a whole number of at least 1, got ${value}`);
  return value;
}

function positive(name, value) {
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new Error(`${name} must be a number above 0, got ${value}`);
  }
  return value;
}

function count(name, value) {
  if (!Number.isInteger(value) || value < 0) throw new Error(`${name} must be a whole number of at least 0, got ${value}`);
  return value;
}

export function stepPlan({ numExamples, microBatch, gradAccum, epochs = 1, maxSteps = null, devices = 1 }) {
  count("num_examples", numExamples);
  positiveInt("micro_batch", microBatch);
  positiveInt("grad_accum", gradAccum);
  positiveInt("devices", devices);
  positive("epochs", epochs);
  if (maxSteps !== null) positiveInt("max_steps", maxSteps);
  return {
    effective_batch: effectiveBatch(microBatch, gradAccum, devices),
    steps_per_epoch: stepsPerEpoch(numExamples, microBatch, gradAccum, devices),
    total_steps: totalSteps(numExamples, microBatch, gradAccum, epochs, maxSteps, devices),
  };
}

// 3% of the optimizer steps, lifted to a floor of 10-25 steps on a run under ~500 steps (never past the run).
export function recommendedWarmupSteps(total, ratio = 0.03, floor = WARMUP_FLOOR_RANGE[0]) {
  positiveInt("total_steps", total);
  if (typeof ratio !== "number" || !(ratio >= 0 && ratio < 1)) throw new Error(`ratio must be in [0, 1), got ${ratio}`);
  const [low, high] = WARMUP_FLOOR_RANGE;
  if (!Number.isInteger(floor) || floor < low || floor > high) {
    throw new Error(`floor must be a whole number of steps from ${low} to ${high}, got ${floor}`);
  }
  let steps = roundHalfEven(ratio * total);
  if (total < 500) steps = Math.max(steps, Math.min(floor, total));
  return steps;
}

export function loraGain(loraAlpha, r, useRslora) {
  positive("lora_alpha", loraAlpha);
  positiveInt("r", r);
  return loraAlpha / (useRslora ? Math.sqrt(r) : r);
}

// The gain-matched alpha: round(g·√r) with rsLoRA, round(g·r) without, at least 1.
export function alphaForGain(gain, r, useRslora) {
  positive("gain", gain);
  positiveInt("r", r);
  return Math.max(1, roundHalfEven(gain * (useRslora ? Math.sqrt(r) : r)));
}

export function alphaAfterRsloraSwitch(loraAlpha, r, toRslora) {
  return alphaForGain(loraGain(loraAlpha, r, !toRslora), r, toRslora);
}

export function gradAccumForTarget(microBatch, targetEffectiveBatch = 16, devices = 1) {
  positiveInt("micro_batch", microBatch);
  positiveInt("target_effective_batch", targetEffectiveBatch);
  positiveInt("devices", devices);
  return Math.max(1, Math.ceil(targetEffectiveBatch / (microBatch * devices)));
}

// The seed's rank buckets by example count, as [low, high].
export function rankRange(numExamples) {
  count("num_examples", numExamples);
  if (numExamples < 500) return [4, 8];
  if (numExamples < 2000) return [8, 16];
  if (numExamples < 10000) return [16, 32];
  if (numExamples < 50000) return [32, 64];
  if (numExamples < 200000) return [64, 64];
  return [64, 128];
}
