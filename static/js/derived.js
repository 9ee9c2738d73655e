// The run form's derived values: the same formulas as training/engine/derived.py (a browser test compares them).

export function effectiveBatch(microBatch, gradAccum, devices = 1) {
  return microBatch * gradAccum * devices;
}

// Optimizer steps in one pass, as transformers 5 counts them: a last partial accumulation still steps.
export function stepsPerEpoch(numExamples, microBatch, gradAccum, devices = 1) {
  if (numExamples <= 0) return 0;
  const microBatches = Math.ceil(numExamples / (microBatch * devices));
  return Math.max(Math.ceil(microBatches / gradAccum), 1);
}

export function totalSteps(numExamples, microBatch, gradAccum, epochs, maxSteps = null, devices = 1) {
  if (maxSteps) return maxSteps;
  return Math.ceil(epochs * stepsPerEpoch(numExamples, microBatch, gradAccum, devices));
}

// warmup is {value, isRatio}: the engine tells an int (steps) from a float (a share of the run) by type,
// which JavaScript numbers cannot carry, so the form says which one was typed.
export function warmupStepsResolved(warmup, total) {
  return warmup.isRatio ? Math.ceil(warmup.value * total) : Math.trunc(warmup.value);
}

export function loraScale(loraAlpha, r, useRslora) {
  return loraAlpha / (useRslora ? Math.sqrt(r) : r);
}

// Rows left for training once eval_split holds some out (datasets' train_test_split: the test share rounds up).
export function trainRows(rows, evalSplit) {
  if (!evalSplit) return rows;
  return rows - Math.ceil(evalSplit * rows);
}
