"""The fit planner (issue 21): peak VRAM, tokens/s and time of a config before launch, calibrated on measured runs.

Pure modules (shapes, estimate, calibrate, levers, slots, reference) take plain data; services and selectors are the
Django side that reads runs and workers."""
